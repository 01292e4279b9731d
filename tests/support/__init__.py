"""What the tests drive and share, none of it a test itself.

crate_runner   crate as a subprocess (the e2e layer's way in), and what an error must look like
processes      crate in the background, waiting for a condition, a command that traps SIGTERM
terminal       crate on a pseudo-terminal (pexpect)
homes          vault homes built once per session (a plugin tests/conftest.py loads)
org_keys       an org opened as the vault's operations take it, values sealed to it
http_server    crate's HTTP adapter under uvicorn in a thread of the test's process
crate_server   a real `crate server` process; relay, an active relay in front of it
tls_ca         a private CA and a certificate for 127.0.0.1
tpm_simulator  swtpm; softhsm_token, a SoftHSM2 token; keyring_service, gnome-keyring
postgres       a throwaway PostgreSQL cluster (initdb, pg_ctl) and fresh databases on it
slots          a slot provider's context and prompts, tpm2 records
vault_state    a vault file as someone with the file sees and edits it
vault_damage   whole vault files damaged, and the check that a refusal left them alone
signals        default signal dispositions for the suite, whatever it inherited
tools          the external programs a test needs (skipped on a laptop, failed in CI)
"""

"""What the tests drive and share, none of it a test itself.

`crate_runner` starts crate as a subprocess (the e2e layer's way in);
`homes` builds vault homes once per session (a pytest plugin that
tests/conftest.py loads); `tpm_simulator`, `softhsm_token` and
`keyring_service` run the real swtpm, SoftHSM2 and gnome-keyring;
`crate_server` and `relay` a real `crate server` and a relay in front of
it; `tls_ca` a private CA; `terminal` crate under pexpect; `vault_state`
reads a vault file as an attacker could; `tools` finds the external
programs a test needs; `signals` gives the suite default signal
dispositions whatever it inherited.
"""

"""`crate run`: the option table and parser (args), the child's environment
and exec (launch), the supervisor for --mask, --mount and --watch, and the
pieces they use. Imported on every `crate run`: nothing here."""

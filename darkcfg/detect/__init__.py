"""darkcfg.detect."""

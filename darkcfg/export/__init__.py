"""darkcfg.export."""

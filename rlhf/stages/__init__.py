"""One entry per stage kind: ``setup`` builds (module, datamodule, tokenizer, callbacks), ``export`` writes ``final/``."""

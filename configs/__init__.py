"""The datasets' config files (installed as ``nifzoo._configs``; ``nifzoo.configs``)."""

"""The command-line tools, one module each, installed as console scripts (`rmjax-train`,
`rmjax-convert`, `rmjax-evaluate`, `rmjax-bench`, `rmjax-prune`, `rmjax-slim`) and run as
`python NAME.py` from a checkout. Each module's `main()` is the entry point; `_main(argv)` is
absl's, which tests call in-process."""

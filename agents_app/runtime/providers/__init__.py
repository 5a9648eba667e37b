"""AI providers for the agent: OpenAI(-compatible) plugins and the offline stand-ins.

Importing this package is cheap; the offline components (Piper is GPL-3.0, Moonshine and
PocketSphinx load models) are imported only by the modules that need them, via `factory`.
"""

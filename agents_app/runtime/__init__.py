"""The agents' runtime: the worker, the providers, the simulator and the demo.

It depends on the configuration apps (agents_app, sessions_app, tools_app: agents, prompts,
tools, sessions) and nothing imports it back (tests/agents_app/test_import_layers.py).
A Django app of its own only so that its management commands (runagent, runllm,
simulate_calls, demo, seed_demo) are found.
"""

"""Import layers (issue 18). The configuration apps (agents, prompts, tools, sessions) never
import the runtime (agents_app/runtime: worker, providers, simulator, demo). The providers
are built without the worker, and the local job runner without the entrypoint: no cycle.
Likewise for the modules split out of larger ones: the local host's wire protocol, the
simulator's transports, the tool ledger's layers and the doctor's checks.

Reads every import statement (module level and inside functions), so an import written
inside a function to dodge a cycle counts too.
"""

from __future__ import annotations

from pathlib import Path

from tests.layers import module_imports

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "agents_app" / "runtime"
CONFIGURATION = ("agents_app", "sessions_app", "tools_app")


def _modules(directory: Path) -> list[Path]:
    found = sorted(directory.rglob("*.py"))
    assert found, f"no modules under {directory}: did it move?"  # never pass on an empty glob
    return found


def test_providers_never_import_the_worker() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in module_imports(path) if m.startswith("agents_app.runtime.worker")
        )
        for path in _modules(RUNTIME / "providers")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_configuration_never_imports_the_runtime() -> None:
    """agents, prompts, tools and sessions (the apps) know nothing of the worker, the
    providers, the simulator or the demo: the runtime depends on them, never the reverse."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in module_imports(path) if m.startswith("agents_app.runtime"))
        for app in CONFIGURATION
        for path in _modules(ROOT / app)
        if RUNTIME not in path.parents
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_fallback_chains_do_not_import_the_builder_and_the_local_runner_not_the_entrypoint() -> None:
    fallback = module_imports(RUNTIME / "providers" / "fallback.py")
    assert not any(m.startswith("agents_app.runtime.providers.factory") for m in fallback)
    local = module_imports(RUNTIME / "worker" / "local.py")
    assert not any(m.startswith("agents_app.runtime.worker.entrypoint") for m in local)


def test_no_private_livekit_adapter_fields_are_read() -> None:
    text = (RUNTIME / "providers" / "fallback.py").read_text()
    for private in ("_llm_instances", "_tts_instances", "_stt_instances", '"_status"', "._stt"):
        assert private not in text, private


def test_the_local_wire_protocol_stands_alone() -> None:
    """Both ends speak it (the simulated caller and the local agent host): it imports
    neither side, nor the platform's apps."""
    wire = module_imports(RUNTIME / "worker" / "local_wire.py")
    assert not any(m.startswith(("agents_app", "sessions_app", "tools_app", "django")) for m in wire)


def test_the_simulators_transports_do_not_load_the_agent_pipeline() -> None:
    for name in ("transport.py", "livekit_transport.py"):
        found = module_imports(RUNTIME / "simulator" / name)
        assert not any(m.startswith("agents_app.runtime.worker.entrypoint") for m in found), name


def test_the_tool_ledger_layers_point_one_way() -> None:
    """ledger (vocabulary) ← claims ← execution ← services (entry points): no module imports
    one after it, so no cycle among them."""
    order = ["ledger", "claims", "execution", "services"]
    for i, name in enumerate(order):
        later = tuple(f"tools_app.{n}" for n in order[i + 1 :])
        found = module_imports(ROOT / "tools_app" / f"{name}.py")
        assert not any(m.startswith(later) for m in found), name


def test_the_doctor_only_reads() -> None:
    """Its checks change nothing (docstring of voiceplatform/doctor/): no service is imported."""
    offenders = {
        path.name: sorted(m for m in module_imports(path) if m.endswith(".services") or ".services." in m)
        for path in (ROOT / "voiceplatform" / "doctor").glob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}

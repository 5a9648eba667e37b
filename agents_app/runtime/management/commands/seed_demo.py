"""`manage.py seed_demo`: the two demo agents, their first published prompts, two demo tools and logins.

- `demo`: conversation with a real small language model (the `local` provider: SmolLM2
  through this machine's llama.cpp server, the stand-in as its fallback) when the model
  is installed; otherwise the stand-in. No tools: the small model does not call them
  (docs/providers.md).
- `demo-scripted`: the offline stand-in LLM, deterministic, with the demo tools: the
  simulated scenarios that need known replies (barge-in on a long answer, tool retries)
  call this one, explicitly.

Safe to run any number of times: it only creates what is missing. It never rewrites a
prompt, a tool or a user that already exists, so edits made in the admin survive.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from agents_app.models import DEFAULT_BUDGETS_MS, Agent, PhoneLine, Provider
from agents_app.selectors import prompt_published
from agents_app.services import prompt_draft_create, prompt_publish
from agents_app.signals import PROMPT_EDITORS, SUPPORT_STAFF, groups_ensure
from tools_app.models import ToolDefinition, ToolKind

DEMO_PASSWORD = "voice-demo"
DEMO_AGENT_SLUG = "demo"
DEMO_SCRIPTED_SLUG = "demo-scripted"
# A number in the range reserved for fiction (555-01xx): the demo agent's phone line.
DEMO_PHONE_NUMBER = "+15550100"

# (username, superuser?, group, what it is for)
DEMO_USERS: tuple[tuple[str, bool, str | None, str], ...] = (
    ("admin", True, None, "superuser: everything in the admin"),
    ("staff", False, SUPPORT_STAFF, "support staff: live dashboard, read-only calls"),
    ("editor", False, PROMPT_EDITORS, "prompt editor: agents, prompts and tools"),
)

DEMO_INSTRUCTIONS = """\
You are {{assistant_name}}, the voice assistant of {{company}}.
Speak in short, friendly sentences: callers hear you, they do not read you.
Our opening hours are {{opening_hours}}.

You can use two tools:
- place_order: when the caller wants to order something, call it with the item and the quantity.
- charge_wallet: when the caller asks to pay or to charge their wallet, call it with the amount in euros and a short reason.
charge_wallet first answers that the caller must confirm: repeat the amount, ask, and call it again only after they say yes.
After a tool call, tell the caller the result in one sentence.
If you do not know something, say so and offer to place an order instead.
"""

DEMO_GREETING = (
    "Hi, this is {{assistant_name}} from {{company}}. I can place an order or charge your wallet. How can I help?"
)

DEMO_CONVERSATION_INSTRUCTIONS = """\
You are {{assistant_name}}, the voice assistant of {{company}}.
We are a coffee shop. Answer in one or two short, friendly sentences: callers hear you, they do not read you.
Our opening hours are {{opening_hours}}. We serve coffee, tea, cappuccino, latte and croissants.
You cannot take orders or payments on this line.
"""

DEMO_CONVERSATION_GREETING = "Hi, this is {{assistant_name}} from {{company}}. Ask me about our menu or our hours."

DEMO_VARIABLES = {"company": "Acme Coffee", "assistant_name": "Robin", "opening_hours": "8 am to 6 pm"}

DEMO_TOOLS: tuple[dict[str, Any], ...] = (
    {
        "name": "place_order",
        "description": "Place an order for the caller: an item from the menu and how many.",
        "parameters": {
            "type": "object",
            "properties": {
                "item": {"type": "string", "minLength": 1, "maxLength": 120, "description": "What to order."},
                "quantity": {"type": "integer", "minimum": 1, "maximum": 20, "description": "How many."},
            },
            "required": ["item", "quantity"],
            "additionalProperties": False,
        },
        "idempotent": False,
    },
    {
        "name": "charge_wallet",
        "description": "Charge the caller's wallet: take an amount of money in euros, with a reason.",
        "parameters": {
            "type": "object",
            "properties": {
                "amount": {"type": "number", "exclusiveMinimum": 0, "maximum": 500, "description": "Euros."},
                "reason": {"type": "string", "maxLength": 200, "description": "What the charge is for."},
            },
            "required": ["amount", "reason"],
            "additionalProperties": False,
        },
        "idempotent": False,
        # Money: the platform waits for the caller's yes, and a call charges at most 3 times.
        "requires_confirmation": True,
        "max_calls_per_session": 3,
    },
)


class Command(BaseCommand):
    help = "Create the demo agent, its published prompt, the demo tools and the demo logins (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--base-url",
            default="http://127.0.0.1:8000",
            help="Where the web server listens, for the printed links (default %(default)s).",
        )
        parser.add_argument(
            "--reset-passwords",
            action="store_true",
            help=f"Set the demo users' password back to {DEMO_PASSWORD!r} even if they already exist.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from django.conf import settings

        if not settings.DEV_DEFAULTS:
            # The demo logins have a published password: never on a real deployment.
            raise CommandError(
                "seed_demo creates logins with the published password 'voice-demo': it runs only with "
                "development defaults (VOICE_DEV_DEFAULTS=true, as `make demo` sets)."
            )
        base = options["base_url"].rstrip("/")
        with transaction.atomic():
            groups = groups_ensure()
            agent_lines = [self._ensure_agent(**spec) for spec in demo_agent_specs()]
            scripted = Agent.objects.get(slug=DEMO_SCRIPTED_SLUG)
            tool_lines = [self._ensure_tool(spec, scripted) for spec in DEMO_TOOLS]
            user_lines = [
                self._ensure_user(name, is_super, groups.get(group or ""), options)
                for name, is_super, group, _ in DEMO_USERS
            ]
            phone_line = self._ensure_phone_line()

        out = self.stdout.write
        out(self.style.SUCCESS("Demo data ready."))
        for line in agent_lines:
            out(f"  agent   {line}")
        for line in tool_lines:
            out(f"  tool    {line}")
        for line in user_lines:
            out(f"  user    {line}")
        out(f"  phone   {phone_line}")
        out("")
        out(f"  Admin:        {base}/admin/")
        out(f"  Prompts:      {base}/admin/agents_app/promptversion/")
        out(f"  Dashboard:    {base}/dashboard/")
        out(f"  Health:       {base}/healthz")
        out("  Logins (password for all: " + DEMO_PASSWORD + "):")
        for name, _, _, purpose in DEMO_USERS:
            out(f"    {name:<7} {purpose}")

    def _ensure_phone_line(self) -> str:
        """The demo agent's phone number, callable from this machine only (docs/telephony.md).
        `make demo` applies it to LiveKit's SIP service when that runs."""
        import os

        allowed = ["127.0.0.1"] + [ip for ip in [os.environ.get("LIVEKIT_NODE_IP", "")] if ip]
        line, created = PhoneLine.objects.get_or_create(
            number=DEMO_PHONE_NUMBER,
            defaults={"agent": Agent.objects.get(slug=DEMO_AGENT_SLUG), "allowed_addresses": allowed},
        )
        return f"{line.number} → {line.agent.slug} (from {', '.join(line.allowed_addresses) or 'digest auth'})" + (
            "" if created else " (kept)"
        )

    def _ensure_agent(self, slug: str, instructions: str, greeting: str, **fields: Any) -> str:
        agent, created = Agent.objects.get_or_create(slug=slug, defaults=fields)
        published = prompt_published(agent=agent)
        prompt_created = published is None
        if prompt_created:
            # Only when the agent has no live prompt: an edited prompt is never reset.
            draft = prompt_draft_create(
                agent=agent,
                instructions=instructions,
                greeting=greeting,
                variables=dict(DEMO_VARIABLES),
                change_note="Demo prompt created by seed_demo",
            )
            published = prompt_publish(version=draft)
        return (
            f"{slug!r} ({'created' if created else 'already there'}; LLM {agent.llm_provider}"
            f"{' ' + agent.llm_model if agent.llm_model else ''}), live prompt v{published.number} "
            f"({'created' if prompt_created else 'kept as it is'})"
        )

    def _ensure_tool(self, spec: dict[str, Any], agent: Agent) -> str:
        tool = ToolDefinition.objects.filter(name=spec["name"]).first()
        created = tool is None
        if created:
            tool = ToolDefinition(kind=ToolKind.BUILTIN, builtin_name=spec["name"], **spec)
            tool.full_clean()
            tool.save()
        tool.agents.add(agent)
        return f"{tool.name} ({'created' if created else 'already there, kept as it is'}), linked to {agent.slug!r}"

    def _ensure_user(self, username: str, superuser: bool, group: Any, options: dict[str, Any]) -> str:
        user = User.objects.filter(username=username).first()
        if user is None:
            if superuser:
                user = User.objects.create_superuser(username, f"{username}@example.com", DEMO_PASSWORD)
            else:
                user = User.objects.create_user(username, f"{username}@example.com", DEMO_PASSWORD, is_staff=True)
            state = "created"
        elif options["reset_passwords"]:
            user.set_password(DEMO_PASSWORD)
            user.save(update_fields=["password"])
            state = "already there, password reset"
        else:
            state = "already there, password unchanged (use --reset-passwords to reset it)"
        if group is not None:
            user.groups.add(group)
        return f"{username} ({state})"


def demo_agent_specs() -> list[dict[str, Any]]:
    """The demo agents as seed_demo creates them (an agent that exists is left as it is)."""
    from agents_app.runtime.providers import local_llm

    real_model = local_llm.available()
    offline = {"stt_provider": Provider.OFFLINE, "tts_provider": Provider.OFFLINE}
    return [
        {
            "slug": DEMO_AGENT_SLUG,
            "name": "Demo agent (SmolLM2, a real small model)" if real_model else "Demo agent",
            "description": "Coffee-shop conversation answered by a real language model served on this machine "
            "(llama.cpp), with the offline stand-in as its fallback."
            if real_model
            else "Coffee-shop conversation with the offline stand-in LLM (the local model is not installed).",
            "llm_provider": Provider.LOCAL if real_model else Provider.OFFLINE,
            "llm_fallbacks": [{"provider": Provider.OFFLINE.value}] if real_model else [],
            # A CPU model's first token: ~0.1-0.5 s warm, more on a cold prompt or a busy
            # machine; the chain gives up on it (for the stand-in) after 3 x this budget.
            "budget_llm_ttft_ms": 1500 if real_model else DEFAULT_BUDGETS_MS["llm_ttft"],
            "instructions": DEMO_CONVERSATION_INSTRUCTIONS,
            "greeting": DEMO_CONVERSATION_GREETING,
            **offline,
        },
        {
            "slug": DEMO_SCRIPTED_SLUG,
            "name": "Demo agent, scripted (stand-in LLM, tools)",
            "description": "The demo coffee shop with the deterministic offline stand-in LLM and the demo tools: "
            "the scenarios that need known replies call it.",
            "llm_provider": Provider.OFFLINE,
            "instructions": DEMO_INSTRUCTIONS,
            "greeting": DEMO_GREETING,
            **offline,
        },
    ]

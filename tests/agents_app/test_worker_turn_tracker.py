"""TurnTracker: how framework events become turn records (no audio, no DB)."""

from __future__ import annotations

from livekit.agents.llm import ChatContext, ChatMessage, FunctionCall, FunctionCallOutput

from agents_app.runtime.worker.turns import TurnTracker


class FakeRecorder:
    def __init__(self) -> None:
        self.turns: list[dict] = []

    def record_turn(self, data: dict) -> None:
        self.turns.append(data)


def _user(text: str, **metrics: float) -> ChatMessage:
    return ChatMessage(role="user", content=[text], metrics={"stopped_speaking_at": 100.0, **metrics})


def _assistant(text: str, *, interrupted: bool = False, **metrics: float) -> ChatMessage:
    return ChatMessage(role="assistant", content=[text] if text else [], interrupted=interrupted, metrics=metrics)


def _ctx(*items) -> ChatContext:
    return ChatContext(items=list(items))


def test_it_records_stage_latencies_in_ms_and_times_first_audio():
    recorder = FakeRecorder()
    tracker = TurnTracker(recorder=recorder, next_index=4)
    tracker.user_message(_user("hello", end_of_turn_delay=0.6, transcription_delay=0.25))
    tracker.generation_for(_ctx(_user("hello"))).text.extend(["Hi ", "there."])
    tracker.first_audio(100.9)
    tracker.assistant_message(_assistant("Hi there.", llm_node_ttft=0.1, tts_node_ttfb=0.2, e2e_latency=0.95))
    (turn,) = recorder.turns
    assert turn["index"] == 4 and turn["user_text"] == "hello"
    assert (turn["eou_ms"], turn["stt_ms"], turn["llm_ttft_ms"], turn["tts_ttfb_ms"], turn["e2e_ms"]) == (
        600.0,
        250.0,
        100.0,
        200.0,
        950.0,
    )
    assert round(turn["ttfa_ms"]) == 900
    assert turn["generated_text"] == turn["heard_text"] == "Hi there."


def test_a_preemptive_generation_started_before_the_user_turn_keeps_its_text():
    recorder = FakeRecorder()
    tracker = TurnTracker(recorder=recorder, next_index=1)
    # the LLM starts (preemptively) before the user message is committed
    generation = tracker.generation_for(_ctx(_user("two pizzas")))
    generation.text.append("Thanks ")
    tracker.user_message(_user("two pizzas"))
    generation.text.append("for calling.")
    tracker.assistant_message(_assistant("Thanks for", interrupted=True))
    (turn,) = recorder.turns
    assert turn["generated_text"] == "Thanks for calling."
    assert turn["heard_text"] == "Thanks for" and turn["interrupted"] and turn["interrupt_source"] == "vad"


def test_a_reply_around_a_tool_call_is_one_turn_with_the_tool_stage():
    recorder = FakeRecorder()
    tracker = TurnTracker(recorder=recorder, next_index=1)
    user = _user("order two pizzas")
    tracker.user_message(user)
    first = tracker.generation_for(_ctx(user))
    first.text.append("One moment.")
    first.tool_pending = True
    assert tracker.assistant_message(_assistant("One moment.")) is None  # not finished yet
    tracker.tool_result({"name": "place_order", "status": "succeeded", "latency_ms": 40.5})
    call = FunctionCall(call_id="c1", name="place_order", arguments="{}")
    output = FunctionCallOutput(call_id="c1", name="place_order", output="ok", is_error=False)
    second = tracker.generation_for(_ctx(user, call, output))
    assert second is first  # a continuation adds to the same reply
    second.text.append(" Done.")
    tracker.assistant_message(_assistant("Done."))
    (turn,) = recorder.turns
    assert turn["generated_text"] == "One moment. Done." and turn["heard_text"] == "One moment. Done."
    assert turn["tool_ms"] == 40.5 and turn["tool_calls"][0]["name"] == "place_order"


def test_a_client_interrupt_is_attributed_to_the_client():
    recorder = FakeRecorder()
    tracker = TurnTracker(recorder=recorder, next_index=0)
    tracker.agent_turn_started(generated="Hello, this is Acme support.")
    tracker.client_interrupt()
    tracker.assistant_message(_assistant("Hello,", interrupted=True))
    (turn,) = recorder.turns
    assert turn["interrupted"] and turn["interrupt_source"] == "client"
    assert turn["generated_text"] == "Hello, this is Acme support." and turn["heard_text"] == "Hello,"


def test_a_reply_cut_before_any_audio_is_stored_interrupted_with_nothing_heard():
    recorder = FakeRecorder()
    tracker = TurnTracker(recorder=recorder, next_index=1)
    tracker.user_message(_user("tell me everything"))
    tracker.generation_for(_ctx(_user("tell me everything"))).text.append("Here at Acme")
    tracker.user_message(_user("stop"))  # barge-in before the assistant message existed
    tracker.close()
    first, second = recorder.turns
    assert first["interrupted"] and first["heard_text"] == "" and first["generated_text"] == "Here at Acme"
    assert second["user_text"] == "stop" and [t["index"] for t in recorder.turns] == [1, 2]

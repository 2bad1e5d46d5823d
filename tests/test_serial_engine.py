"""The one-request-at-a-time path that the Whisper and Piper engines share (``SerialEngine.serve``),
driven by a fake model call that blocks until the test releases it: fast, no compiled artifact."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from ferrum.errors import EngineShutdownError, InvalidRequestError, OverloadedError
from ferrum.manifest import Manifest, TargetInfo
from ferrum.manifest_extra import TtsExtra, TtsFrontEnd
from ferrum.types import EngineConfig
from runtime.artifact import OpenedArtifact
from runtime.serial_engine import RequestUsage, SerialEngine
from serial_cancel import assert_cancelled_waiter_leaves_no_trace, until

WEIGHT_BYTES = 1234


def fake_artifact() -> OpenedArtifact:
    front = TtsFrontEnd(phonemizer="espeak-ng", espeak_voice="en-us", phoneme_id_map={"a": [1]}, sample_rate=22050,
                        hop_length=256, noise_scale=0.667, length_scale=1.0, noise_w=0.8)
    manifest = Manifest(
        name="fake-voice", modality="tts", architecture="fake", model={}, quantization={"name": "q0f32"},
        target=TargetInfo(kind="llvm", triple="x86_64-linux-gnu", device_type="cpu"), tvm_version="0.27.0", ferrum_version="0",
        source={}, library="model.so", functions=[], files={"weights/x.bin": {"sha256": "", "bytes": WEIGHT_BYTES}},
        extra=TtsExtra(param_names=[], front_end=front),
    )
    return OpenedArtifact(Path("fake-voice"), manifest)


class GatedEngine(SerialEngine):
    """Each request's model call blocks until ``release`` is set; it then returns its text or raises."""

    def __init__(self, **config):
        super().__init__(EngineConfig(**config), fake_artifact(), "test-serial")
        self.release = threading.Event()
        self.started = threading.Event()

    async def run(self, text: str, error: Exception | None = None) -> str:
        def work() -> str:
            self.started.set()
            if not self.release.wait(10):
                raise TimeoutError("the test never released the model call")
            if error is not None:
                raise error
            return text

        return await self.serve(work, lambda out: RequestUsage(output_tokens=len(out), chars=len(out)))


def test_a_request_cancelled_while_waiting_leaves_no_count_and_is_counted_cancelled():
    engine = GatedEngine()
    assert_cancelled_waiter_leaves_no_trace(engine, engine.release, lambda: engine.run("text"))
    metrics = engine.metrics()
    assert (metrics.total_requests, metrics.successful_requests, metrics.failed_requests) == (2, 1, 0)


def test_a_request_cancelled_while_running_frees_the_engine_for_the_next():
    engine = GatedEngine()

    async def scenario():
        first = asyncio.create_task(engine.run("first"))
        await until(lambda: engine._running == 1 and engine.started.is_set())
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        during = (engine.queued(), engine._running)
        engine.release.set()  # the interrupted call finishes on the worker; the next one queues behind it
        return during, await engine.run("second")

    during, second = asyncio.run(scenario())
    assert during == (0, 0) and second == "second"
    assert engine.telemetry.counts["cancelled"] == 1 and engine.telemetry.counts["completed"] == 1
    assert engine.telemetry.active_requests() == 0


def test_a_failed_model_call_is_counted_and_shown_in_health_until_a_call_succeeds():
    engine = GatedEngine()
    engine.release.set()
    with pytest.raises(RuntimeError, match="device lost"):
        asyncio.run(engine.run("x", RuntimeError("device lost")))
    health = asyncio.run(engine.health_check())
    assert health.status.value == "Warning" and "device lost" in health.component_status.model_executor.message
    assert engine.metrics().failed_requests == 1 and (engine.queued(), engine._running) == (0, 0)
    assert asyncio.run(engine.run("ok")) == "ok"
    assert asyncio.run(engine.health_check()).status.value == "Healthy"


def test_a_client_error_in_the_model_call_is_a_failed_request_but_not_a_model_warning():
    engine = GatedEngine()
    engine.release.set()
    with pytest.raises(InvalidRequestError):
        asyncio.run(engine.run("x", InvalidRequestError("the text has nothing to speak")))
    assert engine.metrics().failed_requests == 1
    assert asyncio.run(engine.health_check()).status.value == "Healthy"


def test_a_full_waiting_line_is_a_429():
    engine = GatedEngine(max_queue_size=1)

    async def scenario():
        first = asyncio.create_task(engine.run("first"))
        await until(lambda: engine._running == 1)
        second = asyncio.create_task(engine.run("second"))
        await until(lambda: engine.queued() == 1)
        with pytest.raises(OverloadedError) as err:
            await engine.run("third")
        engine.release.set()
        return err.value, await first, await second

    error, first, second = asyncio.run(scenario())
    assert error.status == 429 and (first, second) == ("first", "second")
    assert engine.telemetry.counts["rejected"] == 1 and engine.metrics().total_requests == 2


def test_status_and_health_report_the_artifact_and_shutdown():
    engine = GatedEngine(model_id="voice")
    status, health = asyncio.run(engine.status()), asyncio.run(engine.health_check())
    assert status.is_ready and status.loaded_models == ["voice"] and status.memory_usage.gpu_memory_bytes is None
    assert health.component_status.model_executor.metrics["weight_bytes"] == WEIGHT_BYTES
    assert health.component_status.backend.message == "tvm cpu healthy"
    asyncio.run(engine.shutdown())
    with pytest.raises(EngineShutdownError) as err:
        asyncio.run(engine.run("late"))
    assert err.value.status == 503
    assert asyncio.run(engine.health_check()).status.value == "Unhealthy"
    assert not asyncio.run(engine.status()).is_ready

"""The Modal actuator drives the real `modal` client against a local control plane."""

from __future__ import annotations

import logging
import time

import modal
import pytest
import structlog
from grpclib import Status

from emulators.modal_control_plane import ModalControlPlane, RunningControlPlane
from vllm_autoscaler.actuators.errors import (
    AuthenticationFailed,
    TargetNotFound,
    Unavailable,
)
from vllm_autoscaler.actuators.modal import ModalActuator
from vllm_autoscaler.config.schema import ModalPool
from vllm_autoscaler.controller.types import Actuator, Decision, PoolState, Reason

APP, FUNCTION = "llm", "serve"
POOL = ModalPool(app=APP, function=FUNCTION, max_containers=8, scaledown_window_seconds=120)
UPDATE = "FunctionUpdateSchedulingParams"


def decide(min_containers: int | None, buffer_containers: int | None) -> Decision:
    return Decision(None, min_containers, buffer_containers, Reason("test", "test decision"))


def sent_settings(plane: ModalControlPlane) -> list[dict[str, int]]:
    """The fields of each autoscaler update the control plane received, in order."""
    return [
        {f.name: v for f, v in r.request.settings.ListFields()} for r in plane.received(UPDATE)
    ]


@pytest.fixture
def plane(modal_control_plane: RunningControlPlane) -> ModalControlPlane:
    modal_control_plane.plane.deploy(APP, FUNCTION, max_containers=4, scaledown_window=60)
    return modal_control_plane.plane


@pytest.fixture
async def actuator(plane: ModalControlPlane):
    actuator = ModalActuator(POOL, timeout_seconds=5)
    yield actuator
    await actuator.aclose()


def test_is_an_actuator_of_the_modal_pool():
    actuator = ModalActuator(POOL)
    assert isinstance(actuator, Actuator)
    assert actuator.pool == "modal"


async def test_apply_sets_the_warm_pool_through_the_client(plane, actuator):
    result = await actuator.apply(decide(3, 1))

    deployed = plane.function(APP, FUNCTION)
    [update] = plane.received(UPDATE)
    assert update.request.function_id == deployed.function_id
    assert sent_settings(plane) == [
        {"min_containers": 3, "buffer_containers": 1, "max_containers": 8, "scaledown_window": 120}
    ]
    assert result.changed
    assert result.before.desired == 0
    assert result.after.desired == 4
    assert deployed.settings.min_containers == 3


async def test_only_the_fields_that_differ_are_sent(plane, actuator):
    await actuator.apply(decide(3, 1))
    await actuator.apply(decide(5, 1))

    assert sent_settings(plane)[1] == {"min_containers": 5}
    assert plane.function(APP, FUNCTION).settings.min_containers == 5


async def test_no_update_call_when_the_settings_already_match(plane, actuator):
    await actuator.apply(decide(3, 1))
    again = await actuator.apply(decide(3, 1))

    assert not again.changed
    assert len(plane.received(UPDATE)) == 1
    # It did look: the settings were read back before deciding there was nothing to do.
    assert len(plane.received("FunctionGetSchedulingParams")) == 2


async def test_reapplies_the_same_decision_after_a_redeploy(plane, actuator):
    await actuator.apply(decide(3, 1))
    plane.redeploy(APP)
    assert plane.function(APP, FUNCTION).settings.min_containers == 0

    result = await actuator.apply(decide(3, 1))

    assert result.changed
    assert len(plane.received(UPDATE)) == 2
    assert plane.function(APP, FUNCTION).settings.min_containers == 3
    assert plane.function(APP, FUNCTION).settings.buffer_containers == 1


async def test_a_decision_without_modal_fields_changes_nothing(plane, actuator):
    result = await actuator.apply(decide(None, None))

    assert not result.changed
    assert plane.received() == []


async def test_a_decision_for_min_only_leaves_the_buffer_alone(plane, actuator):
    await actuator.apply(decide(2, None))

    assert "buffer_containers" not in sent_settings(plane)[0]


async def test_min_containers_above_the_configured_max_is_capped(plane, actuator):
    await actuator.apply(decide(50, 0))

    assert sent_settings(plane)[0]["min_containers"] == POOL.max_containers


async def test_dry_run_logs_and_changes_nothing(plane):
    actuator = ModalActuator(POOL, dry_run=True, timeout_seconds=5)
    try:
        with structlog.testing.capture_logs() as logs:
            result = await actuator.apply(decide(3, 1))
    finally:
        await actuator.aclose()

    assert not result.changed
    assert "would set" in result.message
    assert plane.received(UPDATE) == []
    assert plane.function(APP, FUNCTION).settings.min_containers == 0
    [event] = [e for e in logs if e["event"] == "modal.dry_run"]
    assert event["would_set"]["min_containers"] == 3


async def test_current_reads_containers_backlog_and_warm_pool(plane, actuator):
    plane.deploy(APP, FUNCTION, min_containers=1, buffer_containers=2, max_containers=4)
    plane.set_stats(APP, FUNCTION, backlog=7, containers=3, running_inputs=40)

    state = await actuator.current()

    assert (state.ready, state.starting, state.desired, state.backlog) == (3, 0, 3, 7)
    assert isinstance(state, PoolState)


async def test_a_shared_client_is_used_and_left_open(plane):
    client = await modal.Client.from_credentials.aio(*plane.token)
    try:
        for function in ("serve", "embed"):
            plane.deploy(APP, function)
            actuator = ModalActuator(POOL.model_copy(update={"function": function}), client=client)
            await actuator.apply(decide(1, 0))
            await actuator.aclose()
        assert not client.is_closed()
    finally:
        await client.close.aio()
    assert plane.function(APP, "embed").settings.min_containers == 1


async def test_warm_pool_is_capped_by_max_containers(plane, actuator):
    plane.deploy(APP, FUNCTION, min_containers=3, buffer_containers=3, max_containers=4)

    assert (await actuator.current()).desired == 4


async def test_invalid_token_is_a_clear_error(plane, monkeypatch):
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "not-the-secret")
    actuator = ModalActuator(POOL, timeout_seconds=5)
    try:
        with pytest.raises(AuthenticationFailed, match="MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"):
            await actuator.apply(decide(3, 1))
    finally:
        await actuator.aclose()
    assert plane.received(UPDATE) == []


async def test_missing_token_is_a_clear_error_before_any_call(plane, monkeypatch):
    monkeypatch.delenv("MODAL_TOKEN_SECRET")
    actuator = ModalActuator(POOL, timeout_seconds=5)

    with pytest.raises(AuthenticationFailed, match="no Modal token"):
        await actuator.current()
    assert plane.received() == []


async def test_the_token_never_appears_in_logs(plane, monkeypatch, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="modal-client")
    with structlog.testing.capture_logs() as logs:
        actuator = ModalActuator(POOL, timeout_seconds=5)
        await actuator.apply(decide(3, 1))
        await actuator.aclose()
        monkeypatch.setenv("MODAL_TOKEN_SECRET", "wrong-secret-4f1c9")
        rejected = ModalActuator(POOL, timeout_seconds=5)
        with pytest.raises(AuthenticationFailed) as error:
            await rejected.apply(decide(4, 1))
        await rejected.aclose()

    assert any(e["event"] == "modal.updated" for e in logs)  # something was logged
    captured = capsys.readouterr()
    seen = "\n".join([repr(logs), caplog.text, captured.out, captured.err, str(error.value)])
    assert plane.token[1] not in seen
    assert "wrong-secret-4f1c9" not in seen


async def test_unknown_app_is_a_clear_error(plane):
    actuator = ModalActuator(POOL.model_copy(update={"app": "no-such-app"}), timeout_seconds=5)
    try:
        with pytest.raises(TargetNotFound, match="'serve' of app 'no-such-app'.*not found"):
            await actuator.current()
    finally:
        await actuator.aclose()


async def test_a_function_deployed_after_a_failed_lookup_is_found_next_time(plane):
    actuator = ModalActuator(POOL.model_copy(update={"function": "later"}), timeout_seconds=5)
    try:
        with pytest.raises(TargetNotFound, match="Function 'later' not found in app 'llm'"):
            await actuator.apply(decide(1, 0))
        plane.deploy(APP, "later")
        assert (await actuator.apply(decide(1, 0))).changed
    finally:
        await actuator.aclose()


async def test_survives_two_unavailable_answers(plane, actuator):
    plane.fail(Status.UNAVAILABLE, times=2)

    result = await actuator.apply(decide(3, 1))

    assert result.changed
    assert plane.function(APP, FUNCTION).settings.min_containers == 3
    assert len(plane.received("FunctionGet")) == 3  # two failures, then the answer


async def test_persistent_outage_is_a_bounded_error(plane, actuator):
    plane.fail(Status.UNAVAILABLE)

    started = time.monotonic()
    with pytest.raises(Unavailable, match="could not update the warm pool"):
        await actuator.apply(decide(3, 1))

    # The client's own retries give up well before the actuator's timeout (5 s).
    assert time.monotonic() - started < 5
    assert len(plane.received()) > 1


async def test_a_control_plane_that_does_not_answer_hits_the_timeout(plane):
    plane.slow_down(60)
    actuator = ModalActuator(POOL, timeout_seconds=1)
    started = time.monotonic()
    try:
        with pytest.raises(Unavailable, match="no answer within 1 s"):
            await actuator.current()
    finally:
        await actuator.aclose()
    assert time.monotonic() - started < 5

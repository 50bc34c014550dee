"""The local Modal control plane answers the real `modal` client as Modal does."""

from __future__ import annotations

import time

import modal
import modal.exception
import pytest
from grpclib import Status

from emulators.modal_control_plane import ModalControlPlane, RunningControlPlane

APP, FUNCTION = "llm", "serve"


@pytest.fixture
def plane(modal_control_plane: RunningControlPlane) -> ModalControlPlane:
    modal_control_plane.plane.deploy(APP, FUNCTION, max_containers=10, scaledown_window=60)
    return modal_control_plane.plane


@pytest.fixture
def client(plane: ModalControlPlane):
    client = modal.Client.from_credentials(*plane.token)
    yield client
    client.close()


def lookup(client: modal.Client, app: str = APP, name: str = FUNCTION) -> modal.Function:
    function = modal.Function.from_name(app, name, client=client)
    function.hydrate()
    return function


def test_lookup_answers_the_deployed_function_id(plane, client):
    function = lookup(client)

    assert function.object_id == plane.function(APP, FUNCTION).function_id
    [request] = [r.request for r in plane.received("FunctionGet")]
    assert (request.app_name, request.object_tag) == (APP, FUNCTION)


def test_autoscaler_update_overrides_only_the_fields_sent(plane, client):
    function = lookup(client)

    function.autoscaler.update(min_containers=2, buffer_containers=1)

    assert function.autoscaler.settings() == modal.types.FunctionAutoscalerSettings(
        min_containers=2, max_containers=10, scaledown_window=60, buffer_containers=1
    )
    [update] = plane.received("FunctionUpdateSchedulingParams")
    assert {f.name for f, _ in update.request.settings.ListFields()} == {
        "min_containers",
        "buffer_containers",
    }


def test_redeploy_wipes_overrides_and_keeps_the_function_id(plane, client):
    function = lookup(client)
    function.autoscaler.update(min_containers=2)
    function_id = function.object_id

    plane.redeploy(APP)

    assert function.autoscaler.settings().min_containers == 0
    assert plane.function(APP, FUNCTION).function_id == function_id


def test_current_stats_are_the_ones_set(plane, client):
    plane.set_stats(APP, FUNCTION, backlog=5, containers=3, running_inputs=12, input_headroom=4)

    stats = lookup(client).get_current_stats()

    assert (stats.backlog, stats.num_total_runners) == (5, 3)
    assert (stats.num_running_inputs, stats.input_headroom) == (12, 4)


def test_unknown_app_and_function_are_not_found(plane, client):
    with pytest.raises(modal.exception.NotFoundError, match="App 'other' not found"):
        lookup(client, app="other")
    with pytest.raises(modal.exception.NotFoundError, match="Function 'other' not found"):
        lookup(client, name="other")


def test_a_wrong_token_is_unauthenticated(plane):
    client = modal.Client.from_credentials(plane.token[0], "wrong")
    try:
        with pytest.raises(modal.exception.AuthError):
            lookup(client)
    finally:
        client.close()
    assert plane.received()[0].token_id == plane.token[0]


def test_other_rpcs_are_unimplemented_and_recorded(plane, client):
    with pytest.raises(modal.exception.UnimplementedError, match="ClientHello is not emulated"):
        client.hello()
    assert [r.rpc for r in plane.received()] == ["ClientHello"]


def test_injected_faults_hit_only_their_rpc_and_count_down(plane, client):
    function = lookup(client)
    plane.fail(Status.UNAVAILABLE, times=2, rpc="FunctionGetSchedulingParams")

    function.get_current_stats()
    function.autoscaler.settings()  # the client retries past the two failures

    assert len(plane.received("FunctionGetCurrentStats")) == 1
    assert len(plane.received("FunctionGetSchedulingParams")) == 3


def test_a_persistent_fault_outlasts_the_client_retries(plane, client):
    plane.fail(Status.INTERNAL)

    with pytest.raises(modal.exception.InternalError):
        lookup(client)
    plane.clear_faults()
    lookup(client)


def test_slow_down_delays_the_answer(plane, client):
    plane.slow_down(0.5, times=1)

    started = time.monotonic()
    lookup(client)

    assert time.monotonic() - started >= 0.5

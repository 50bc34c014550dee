"""A small world for the daemon: the Kubernetes API emulator with a vLLM Deployment, the local
Modal control plane with a deployed function, and one stand-in vLLM replica whose /metrics
the test writes (read by the real direct-scrape source)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import yaml
from daemon_world import APP, DEPLOYMENT, FUNCTION, config_dict, vllm_page
from emulators.vllm_exporter import Exporter, exporters
from vllm_autoscaler.config.loader import load_config
from vllm_autoscaler.controller.daemon import Daemon


@pytest.fixture
async def replica() -> AsyncIterator[Exporter]:
    async with exporters(vllm_page()) as [exporter]:
        yield exporter


@pytest.fixture
def world(kube, modal_control_plane):
    """The Deployment (1 replica) and the Modal function the daemon scales."""
    kube.add_deployment(DEPLOYMENT, replicas=1)
    modal_control_plane.plane.deploy(APP, FUNCTION, scaledown_window=60)
    return modal_control_plane.plane


MakeDaemon = Callable[..., Daemon]


@pytest.fixture
async def make_daemon(tmp_path, kube, world, replica) -> AsyncIterator[MakeDaemon]:
    """`make_daemon(*overrides, identity=..., dry_run=...)`: a daemon on the config file
    `tmp_path/config.yaml` (written on first use), closed at the end."""
    path = tmp_path / "config.yaml"
    made: list[Daemon] = []

    def make(*overrides: str, identity: str = "pod-a", dry_run: bool = False) -> Daemon:
        if not path.exists():
            path.write_text(yaml.safe_dump(config_dict(replica.url)))
        daemon = Daemon(load_config(path, list(overrides)), config_path=path,
                        overrides=overrides, kubeconfig=str(kube.kubeconfig), host="127.0.0.1",
                        port=0, identity=identity, dry_run=dry_run)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        await daemon.aclose()



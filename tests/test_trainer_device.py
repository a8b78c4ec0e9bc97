import socket

import pytest
import torch


def test_a_rank_follows_deepspeeds_cpu_accelerator_even_where_cuda_is_visible(monkeypatch):
    """DeepSpeed's launcher sets CUDA_VISIBLE_DEVICES=0,1,... for its ranks even under DS_ACCELERATOR=cpu (its CPU
    accelerator's set_visible_devices_envs): such a rank trains on the CPU with gloo, not on the GPUs it sees."""
    import torch.distributed as dist

    from distill import distributed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the GPU node
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: pytest.fail("the rank picked CUDA device %s" % i))
    monkeypatch.setattr(distributed, "watch_launchers", lambda: None)
    for key, value in dict(DS_ACCELERATOR="cpu", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(port)).items():
        monkeypatch.setenv(key, value)
    try:
        rank, world, _, device = distributed.init_distributed()
        assert (rank, world, device.type, dist.get_backend()) == (0, 1, "cpu", "gloo")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()

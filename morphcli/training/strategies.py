"""How each `distribute.strategy` of the config is built (`distribute.make_strategy`
calls these): the default strategy, one device, mirrored over local devices (a
split CPU included), multi-worker from TF_CONFIG or `distribute.cluster` with a
bounded start-up, and TPUs."""

from __future__ import annotations

import json
import os
import socket

from morphcli.errors import MorphError
from morphcli.errors import tf_first_line as _first_line


def _default(conf):
    import tensorflow as tf

    return tf.distribute.get_strategy()


def _one_device(conf):
    import tensorflow as tf

    device = conf.devices[0] if conf.devices else (
        "/gpu:0" if tf.config.list_physical_devices("GPU") else "/cpu:0")
    _split_cpu(conf.devices or ())
    return _checked_devices(lambda: tf.distribute.OneDeviceStrategy(device), conf.devices)


def _mirrored(conf):
    import tensorflow as tf

    _split_cpu(conf.devices or ())
    return _checked_devices(lambda: tf.distribute.MirroredStrategy(
        devices=list(conf.devices) if conf.devices else None), conf.devices)


def _device_key(name: str) -> str:
    """"/gpu:0", "/device:GPU:0", "/job:localhost/replica:0/task:0/device:GPU:0" -> "GPU:0"."""
    kind, _, index = name.rsplit("/", 1)[-1].replace("device:", "").partition(":")
    return f"{kind.upper()}:{index}"


def _checked_devices(make, devices):
    import tensorflow as tf

    present = {_device_key(d.name) for d in tf.config.list_logical_devices()}
    absent = [d for d in devices or () if _device_key(d) not in present]
    if absent:  # TensorFlow would silently place the replicas on the CPU instead
        raise MorphError(
            f"This machine has no device {absent[0]}: it has {', '.join(sorted(present))}. "
            f"Received: devices={list(devices)}",
            hint="name devices this machine has, or leave distribute.devices null.")
    try:
        return make()
    except (ValueError, RuntimeError) as error:
        raise MorphError(
            f"Cannot place replicas on the devices asked for: {_first_line(error)}. "
            f"Received: devices={list(devices) if devices else None}",
            hint="list the machine's devices with `python -c \"import tensorflow as tf; "
                 "print(tf.config.list_logical_devices())\"`.") from None


def _split_cpu(devices) -> None:
    """Splits the CPU into logical devices when more CPUs are named than exist.

    Several CPU replicas train no faster than one; they exist to try a
    multi-replica config (and to test it) on a machine without GPUs.
    """
    import tensorflow as tf

    wanted = [int(d.rsplit(":", 1)[1]) for d in devices
              if d.lower().replace("/device:", "/").startswith("/cpu:")
              and d.rsplit(":", 1)[1].isdigit()]
    cpu = tf.config.list_physical_devices("CPU")[0]
    split = tf.config.get_logical_device_configuration(cpu)  # unlike listing, no TF start-up
    if not wanted or max(wanted) < len(split or [cpu]):
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * (max(wanted) + 1))
    except RuntimeError:
        raise MorphError(
            f"Cannot split the CPU into {max(wanted) + 1} devices: TensorFlow is already "
            f"running in this process. Received: devices={list(devices)}",
            hint="create the strategy (distribute.make_strategy) before anything else "
                 "uses TensorFlow.") from None


def _multi_worker(conf):
    import tensorflow as tf

    resolver = _cluster_resolver(conf)
    _bound_start_up(resolver, conf.timeout_seconds)
    implementation = {"auto": "AUTO", "ring": "RING", "nccl": "NCCL"}[conf.communication]
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=getattr(tf.distribute.experimental.CommunicationImplementation,
                               implementation),
        timeout_seconds=float(conf.timeout_seconds))
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=resolver, communication_options=options)
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError) as error:
        raise MorphError(
            f"Worker {resolver.task_type}:{resolver.task_id} could not reach the rest of the "
            f"cluster within {conf.timeout_seconds:g} s ({_first_line(error)}). "
            f"Received: cluster={json.dumps(resolver.cluster_spec().as_dict())}",
            hint="start every worker with the same config and its own task within "
                 "distribute.timeout_seconds, and check hosts, ports and firewalls.") from None


def _cluster_resolver(conf):
    """From `distribute.cluster` + `task_index`, or else from the TF_CONFIG variable."""
    import tensorflow as tf

    resolvers = tf.distribute.cluster_resolver
    if conf.cluster:
        if conf.task_index is None or conf.task_index >= len(conf.cluster):
            raise MorphError(
                f"With distribute.cluster, each worker needs its own distribute.task_index "
                f"between 0 and {len(conf.cluster) - 1}. Received: task_index={conf.task_index}",
                hint="give it per machine, e.g. `--set distribute.task_index=1`, or use TF_CONFIG.")
        spec = tf.train.ClusterSpec({"worker": list(conf.cluster)})
        return resolvers.SimpleClusterResolver(spec, task_type="worker", task_id=conf.task_index,
                                               rpc_layer="grpc")
    resolver = resolvers.TFConfigClusterResolver()
    if not resolver.cluster_spec().jobs:
        raise MorphError(
            "strategy multi_worker needs the cluster's addresses. Received: TF_CONFIG="
            f"{os.environ.get('TF_CONFIG')!r}, distribute.cluster=null",
            hint="set TF_CONFIG on every worker (see configs/multi_worker.yaml), or "
                 "distribute.cluster and distribute.task_index.")
    return resolver


def _bound_start_up(resolver, timeout: float) -> None:
    """Configures TensorFlow's coordination service so that start-up is bounded.

    By default the leader waits forever for missing workers. With a
    registration barrier and `timeout`, every worker (leader included) fails
    with DeadlineExceeded when the cluster is not complete in time. TF has no
    public API for these settings; MultiWorkerMirroredStrategy keeps a
    service configured before it is created, which is what we rely on.
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    spec = resolver.cluster_spec()
    jobs = [job for job in ("chief", "worker") if job in spec.jobs]
    ms = int(timeout * 1000)
    ctx = context.context()
    ctx.configure_coordination_service(
        service_type="standalone", service_leader=f"/job:{jobs[0]}/replica:0/task:0",
        cluster_register_timeout_in_ms=ms, shutdown_barrier_timeout_in_ms=ms,
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=job,
                                                                 num_tasks=spec.num_tasks(job))
                          for job in jobs])
    ctx.coordination_service.cluster_register_with_barrier = True


def _tpu(conf):
    import tensorflow as tf

    address = conf.tpu or "local"
    if address.startswith("grpc://"):
        _check_reachable(address, conf.timeout_seconds)
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
        if address != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise MorphError(f"Cannot connect to the TPU: {_first_line(error)}. "
                         f"Received: tpu={address!r}",
                         hint="on a TPU VM use `tpu: local`; otherwise the TPU's name or "
                              "grpc://IP:8470 address.") from None


def _check_reachable(address: str, timeout: float) -> None:
    """Fails fast when nothing listens at a grpc:// address (TF would wait forever)."""
    host, _, port = address.removeprefix("grpc://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=min(timeout, 30.0)):
            pass
    except (OSError, ValueError) as error:
        raise MorphError(f"Cannot reach the TPU at {address}: {error}. Received: tpu={address!r}",
                         hint="check the address and that the TPU is running.") from None


BUILDERS = {"default": _default, "one_device": _one_device, "mirrored": _mirrored,
             "multi_worker": _multi_worker, "tpu": _tpu}

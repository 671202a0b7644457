"""Invocations: how a branch of a run reaches a worker, whatever the platform.

An `Invocation` (model.py) is a first-class thing: the run, the branch's start task, an
attempt number, inputs that travel inline. The payload format (payload.py) turns it into
the small JSON event every platform delivers; a transport (transports.py) delivers it:
the local gateway's pipe from inside a gateway worker (pipe.py), the gateway's in-process
fast path from a client that owns the gateway, or the AWS Lambda Invoke API through
aiobotocore. `RemoteInvoker` (invoker.py) is what the runtime calls to start workers in
other processes.

This layer sits below the runtime and the backends: it imports the DAG, the plan, the
store and the serializer, never `runtime/` or `backends/`. The worker entry that every
platform runs, `dask_kong.handler`, sits above it and the runtime.
"""

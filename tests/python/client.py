"""A third-party client of Helios, written from proto/ alone (issue 16): Python grpcio stubs
generated at run time from the repository's .proto files drive a running cluster.

    python client.py PROTO_DIR ADDR [ADDR...]

The cluster must have a client agent that runs exec tasks. Each step asserts what the API
promises; the first failure ends the program with a non-zero status and says which step.
"""

import importlib
import os
import sys
import tempfile
import threading
import time
import uuid

import grpc
from grpc_status import rpc_status
from grpc_tools import protoc
from google.rpc import error_details_pb2


def generate(proto_dir):
    """Generates the stubs into a temporary package directory and imports them."""
    out = tempfile.mkdtemp(prefix="helios-py-")
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    files = sorted(
        os.path.join(proto_dir, "helios", "v1", name)
        for name in os.listdir(os.path.join(proto_dir, "helios", "v1"))
        if name.endswith(".proto")
    )
    args = ["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + files) != 0:
        sys.exit("protoc failed on proto/")
    sys.path.insert(0, out)
    names = ["types", "api", "events", "client", "acl"]
    return {n: importlib.import_module(f"helios.v1.{n}_pb2") for n in names}, {
        n: importlib.import_module(f"helios.v1.{n}_pb2_grpc") for n in ["api", "events"]
    }


def step(what):
    print(f"-- {what}", flush=True)


def main():
    proto_dir, addrs = sys.argv[1], sys.argv[2:]
    pb, rpc = generate(proto_dir)
    types, api, events = pb["types"], pb["api"], pb["events"]
    channels = {addr: grpc.insecure_channel(addr) for addr in addrs}

    def jobs(addr):
        return rpc["api"].JobServiceStub(channels[addr])

    step("find a follower")
    members = rpc["api"].ClusterServiceStub(channels[addrs[0]]).ListMembers(api.ListMembersRequest(), timeout=10)
    leader = next(m.addr for m in members.members if m.id == members.leader_id)
    followers = [a for a in addrs if a != leader]
    assert followers, f"no follower among {addrs} (leader {leader})"
    follower = followers[0]

    name = f"py-{uuid.uuid4().hex[:8]}"
    step(f"subscribe to job {name}'s events on {follower}, from the index a read reflects")
    seen = []
    index = jobs(follower).ListJobs(api.ListJobsRequest(page_size=1), timeout=10).index
    stream = rpc["events"].EventServiceStub(channels[follower]).Subscribe(
        events.SubscribeRequest(
            topics=[events.TopicFilter(topic=events.EVENT_TOPIC_JOB, keys=[name])], from_index=index + 1
        ),
        timeout=60,
    )

    def collect():
        try:
            for batch in stream:
                seen.extend(batch.events)
        except grpc.RpcError:
            pass  # cancelled at the end

    threading.Thread(target=collect, daemon=True).start()

    step("submit a batch job through the follower, with a request id")
    job = types.Job(
        name=name,
        type=types.JOB_TYPE_BATCH,
        task_groups=[
            types.TaskGroup(
                name="g",
                count=1,
                tasks=[
                    types.Task(
                        name="t",
                        exec=types.ExecConfig(command="/bin/sh", args=["-c", "echo hello from python; sleep 1"]),
                    )
                ],
            )
        ],
    )
    request_id = str(uuid.uuid4())
    first = jobs(follower).SubmitJob(api.SubmitJobRequest(job=job, request_id=request_id), timeout=30)
    assert first.changed and first.version == 0, first

    step("retry it with the same id through another server: the first answer, applied once")
    again = jobs(leader).SubmitJob(api.SubmitJobRequest(job=job, request_id=request_id), timeout=30)
    assert (again.version, again.eval_id) == (first.version, first.eval_id), (again, first)
    versions = jobs(follower).GetJobVersions(api.GetJobVersionsRequest(name=name), timeout=10)
    assert [v.version for v in versions.versions] == [0], versions

    step("the event stream shows the job")
    deadline = time.time() + 30
    while not any(e.key == name and e.HasField("job") for e in seen):
        assert time.time() < deadline, f"no event for {name}: {seen}"
        time.sleep(0.1)
    stream.cancel()

    step("wait for the task to run (blocking reads), then follow its log to its end")
    index, alloc = 0, None
    deadline = time.time() + 60
    while alloc is None:
        assert time.time() < deadline, "the allocation did not start"
        status = jobs(follower).GetJobStatus(
            api.GetJobStatusRequest(name=name, min_index=index, wait={"seconds": 5}), timeout=15
        )
        index = status.index
        up = (types.ALLOCATION_CLIENT_STATUS_RUNNING, types.ALLOCATION_CLIENT_STATUS_COMPLETE)
        started = [a for a in status.allocations if a.client_status in up]
        alloc = started[0] if started else None
    allocs = rpc["api"].AllocationServiceStub(channels[follower])
    followed = allocs.AllocLogs(api.AllocLogsRequest(id=alloc.id, follow=True), timeout=30)
    logs = b"".join(c.data for c in followed)
    assert logs == b"hello from python\n", logs

    step("page through the job list")
    for i in range(3):
        extra = types.Job(name=f"{name}-{i}", type=types.JOB_TYPE_BATCH, task_groups=job.task_groups)
        jobs(leader).SubmitJob(api.SubmitJobRequest(job=extra), timeout=30)
    names, token, pages = [], "", 0
    while True:
        page = jobs(follower).ListJobs(api.ListJobsRequest(page_size=2, page_token=token), timeout=10)
        names.extend(j.name for j in page.jobs)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    mine = [n for n in names if n.startswith(name)]
    assert mine == sorted(mine) and len(mine) == 4 and len(set(names)) == len(names), names
    assert pages >= 2, pages

    step("read a typed error")
    bad = types.Job(name=f"{name}-bad", task_groups=[types.TaskGroup(name="g", tasks=[types.Task(name="t", exec=types.ExecConfig())])])
    try:
        jobs(follower).SubmitJob(api.SubmitJobRequest(job=bad), timeout=10)
        sys.exit("an invalid job was accepted")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        details = rpc_status.from_call(error)
        assert details is not None, "no grpc-status-details-bin"
        info, fields = None, []
        for detail in details.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                fields = [v.field for v in bad_request.field_violations]
        assert info is not None and (info.reason, info.domain) == ("INVALID_FIELD", "helios.v1"), info
        assert "job.task_groups[0].tasks[0].exec.command" in fields, fields

    print("ok: a Python client generated from proto/ drove the cluster", flush=True)


if __name__ == "__main__":
    main()

//! The event stream and blocking reads on a real three-server cluster with a real agent: events
//! arrive in log order, filtered; a subscriber resumes on another server from its last index and
//! misses nothing; a server that no longer holds an index says so; blocking reads answer when
//! what they read changes, and within the caller's deadline when it does not; a subscriber whose
//! filter selects nothing still learns how far the log has moved. (No agent runs in
//! the blocking-read test: nothing but the test writes a job there.)

mod common;

use std::time::Duration;

use common::{wait_for, Reaper, TestCluster};
use helios_api::convert::Label;
use helios_api::pb;
use helios_api::pb::event_service_client::EventServiceClient;
use helios_core::{ExecConfig, Job, JobType, TaskDriver};
use tonic::Streaming;

/// A service job of one task that runs until stopped.
fn sleeper(name: &str) -> Job {
    let mut job = Job::exec(name, "sleep", vec!["600".into()]);
    job.set_type(JobType::Service);
    job.task_groups[0].tasks[0].driver = TaskDriver::Exec(ExecConfig::new("sleep", vec!["600".into()]));
    job
}

fn topic(topic: pb::EventTopic, key: &str) -> pb::TopicFilter {
    pb::TopicFilter { topic: topic as i32, keys: vec![key.to_string()] }
}

async fn subscribe(
    cluster: &TestCluster,
    via: u64,
    from_index: Option<u64>,
) -> Result<Streaming<pb::EventBatch>, tonic::Status> {
    let mut client = EventServiceClient::new(cluster.channel(via).await);
    let topics = vec![topic(pb::EventTopic::Job, "web"), topic(pb::EventTopic::Allocation, "web")];
    client.subscribe(pb::SubscribeRequest { topics, from_index }).await.map(|r| r.into_inner())
}

/// What an event says, for comparing streams: index, topic, type, key, and the state written.
type Seen = (u64, i32, i32, String, String);

fn seen(event: &pb::Event) -> Seen {
    let state = match &event.payload {
        Some(pb::event::Payload::Job(j)) => format!("v{} stopped={}", j.version, j.stopped),
        Some(pb::event::Payload::Allocation(a)) => {
            format!("{}/{}", a.desired_status().label(), a.client_status().label())
        }
        other => format!("{other:?}"),
    };
    (event.index, event.topic, event.r#type, event.key.clone(), state)
}

/// Reads batches until `done` says the events so far are enough; checks each batch's order.
async fn read_until(stream: &mut Streaming<pb::EventBatch>, mut done: impl FnMut(&[Seen]) -> bool) -> Vec<Seen> {
    let mut events: Vec<Seen> = Vec::new();
    let mut last_index = 0;
    tokio::time::timeout(common::WAIT, async {
        while !done(&events) {
            let batch = stream.message().await.expect("stream").expect("not ended");
            // (An empty batch, the first or a heartbeat, only says where the stream is.)
            let ordered = batch.index > last_index || (batch.events.is_empty() && batch.index >= last_index);
            assert!(ordered, "batches in log order: {} after {last_index}", batch.index);
            for event in &batch.events {
                assert!(event.index > last_index && event.index <= batch.index, "{event:?} in batch {}", batch.index);
                events.push(seen(event));
            }
            last_index = batch.index;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out; events so far: {events:?}"));
    events
}

fn running_alloc(events: &[Seen]) -> bool {
    events.iter().any(|e| e.1 == pb::EventTopic::Allocation as i32 && e.4 == "run/running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_arrive_in_order_and_resume_on_another_server_without_a_gap() {
    let cluster = TestCluster::start(3).await;
    cluster.leader().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = Reaper(dir.path().to_path_buf());
    let _agent = common::start_agent(&cluster, "n1", dir.path()).await;
    common::wait_status(&cluster, 1, "n1", "ready").await;

    let mut first = subscribe(&cluster, 1, None).await.expect("subscribe");
    cluster.submit_job(3, &sleeper("other")).await;
    cluster.submit_job(2, &sleeper("web")).await;
    let placed = read_until(&mut first, running_alloc).await;
    assert!(placed.iter().all(|e| e.3 != "other"), "only web's events: {placed:?}");
    let job = placed.iter().find(|e| e.1 == pb::EventTopic::Job as i32).expect("the job's event");
    assert_eq!((job.2, job.3.as_str(), job.4.as_str()), (pb::EventType::Upserted as i32, "web", "v0 stopped=false"));
    let resume_from = placed.last().expect("events").0 + 1;

    // Stopped: the job and its allocation change. One subscriber has followed all along; another
    // resumes on server 3 from the index after the last it saw. They see the same events.
    let mut jobs = cluster.jobs(2).await;
    jobs.stop_job(pb::StopJobRequest { name: "web".into(), purge: false, ..Default::default() }).await.expect("stop");
    let stopped = |events: &[Seen]| events.iter().any(|e| e.4.starts_with("stop/") && e.4 != "stop/running");
    let followed = read_until(&mut first, stopped).await;
    let mut resumed = subscribe(&cluster, 3, Some(resume_from)).await.expect("resume");
    // Its first message is empty and says where it starts.
    let start = resumed.message().await.expect("stream").expect("a first message");
    assert_eq!((start.index, start.events.len()), (resume_from - 1, 0));
    let last = followed.last().expect("events").0;
    let mut again = read_until(&mut resumed, |events| events.last().is_some_and(|e| e.0 >= last)).await;
    // (Its last batch may reach further: the log has moved on since.)
    again.retain(|e| e.0 <= last);
    assert_eq!(again, followed);
    assert!(followed.iter().any(|e| e.3 == "web" && e.4 == "v0 stopped=true"), "{followed:?}");

    // An index before the log's first, or past the next to be written, is refused by name.
    for (from, problem) in [(0, "at least 1"), (u64::MAX, "past the next index")] {
        let refused = subscribe(&cluster, 1, Some(from)).await.expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains("from_index") && refused.message().contains(problem), "{refused:?}");
    }

    // A server that restarted holds no events from before it started: an index from then is
    // refused, clearly (index 1: applied before the restart whatever server 2 had caught up to).
    let mut cluster = cluster;
    cluster.stop(2).await;
    cluster.restart(2).await;
    let refused = wait_for("server 2 answering", || async {
        match subscribe(&cluster, 2, Some(1)).await {
            Err(status) if status.code() == tonic::Code::OutOfRange => Some(status),
            _ => None,
        }
    })
    .await;
    assert!(refused.message().contains("no longer held"), "{}", refused.message());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blocking_read_answers_when_its_state_changes_and_before_the_deadline_when_not() {
    let cluster = TestCluster::start(3).await;
    cluster.leader().await;
    cluster.submit_job(1, &sleeper("web")).await;
    let mut jobs = cluster.jobs(2).await;
    let read = |min_index: Option<u64>, wait: Option<Duration>| pb::GetJobRequest {
        name: "web".into(),
        min_index,
        wait: wait.map(helios_api::convert::duration_to_pb),
    };
    let now = jobs.get_job(read(None, None)).await.expect("read").into_inner();
    assert!(now.index > 0);

    // Nothing changes: after its wait (not before) it answers the same job at the same index.
    let asked = std::time::Instant::now();
    let unchanged = jobs.get_job(read(Some(now.index), Some(Duration::from_millis(300)))).await.expect("read");
    assert!(asked.elapsed() >= Duration::from_millis(300), "answered after {:?}", asked.elapsed());
    assert_eq!(unchanged.get_ref().index, now.index);
    // A deadline shorter than the wait: answered within it, not cut off by it.
    let mut request = tonic::Request::new(read(Some(now.index), Some(Duration::from_secs(600))));
    request.set_timeout(Duration::from_millis(800));
    let in_time = jobs.get_job(request).await.expect("answered before the deadline");
    assert_eq!(in_time.get_ref().index, now.index);
    // A new version, written through another server, wakes a read waiting on a third.
    let waiting = {
        let mut jobs = cluster.jobs(3).await;
        let request = read(Some(now.index), Some(Duration::from_secs(120)));
        tokio::spawn(async move { jobs.get_job(request).await.expect("blocking read").into_inner() })
    };
    let mut changed = sleeper("web");
    changed.meta.insert("release".into(), "2".into());
    let submitted = cluster.submit_job(1, &changed).await;
    let woke = waiting.await.expect("task");
    assert_eq!(woke.job.expect("job").version, 1);
    assert!(woke.index >= submitted.index, "{} reflects the write at {}", woke.index, submitted.index);

    let negative = pb::GetJobRequest {
        name: "web".into(),
        min_index: Some(1),
        wait: Some(helios_api::prost_types::Duration { seconds: -1, nanos: 0 }),
    };
    let refused = jobs.get_job(negative).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("wait"), "{}", refused.message());
    cluster.shutdown().await;
}

/// A subscriber whose filter selects nothing still learns, within a heartbeat, how far the log
/// has moved, however busy the log is: it resumes from there, not from where it subscribed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_that_selects_nothing_is_told_how_far_the_log_has_moved() {
    let cluster = TestCluster::start(3).await;
    cluster.leader().await;
    let mut stream = subscribe(&cluster, 2, None).await.expect("subscribe");
    let start = stream.message().await.expect("stream").expect("a first message").index;
    // Other jobs keep the log moving, more often than the heartbeat's interval.
    let first = cluster.submit_job(1, &sleeper("busy-0")).await.index;
    let told = tokio::time::timeout(Duration::from_secs(60), async {
        for n in 1.. {
            if let Ok(message) = tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
                let batch = message.expect("stream").expect("not ended");
                assert!(batch.events.is_empty(), "nothing of web was written: {batch:?}");
                if batch.index >= first {
                    return batch.index;
                }
            }
            cluster.submit_job(1, &sleeper(&format!("busy-{n}"))).await;
        }
        unreachable!()
    })
    .await
    .expect("a heartbeat while the log moves");
    assert!(told > start, "{told} after {start}");
    cluster.shutdown().await;
}

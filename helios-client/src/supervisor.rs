//! Keeps one task running as its job type and restart policy say, through its driver.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use helios_core::{JobType, RestartMode, RestartPolicy, Task, TaskEvent, TaskEventKind, TaskState};
use tokio::sync::{mpsc, watch};

use crate::drivers::{Driver, TaskRun};
use crate::runner::{dead, event, pending, stop_requested, Owner, DONE_MARKER};

/// Task events kept per task (the oldest are dropped).
const MAX_EVENTS: usize = 50;

/// Keeps one task running as its job type and restart policy say: a batch task is restarted
/// only when it fails, a service or system task whenever it exits; at most `attempts` restarts
/// within `interval_secs`, `delay_secs` apart; then the task fails (mode `fail`), or waits out
/// the interval and starts over (mode `delay`).
pub(crate) struct Supervisor {
    pub owner: Owner,
    pub driver: Arc<dyn Driver>,
    pub job_type: JobType,
    pub policy: RestartPolicy,
    /// The task's directory.
    pub dir: PathBuf,
    /// The servers' stop order for the allocation.
    pub stop: watch::Receiver<bool>,
    /// Where every change of the task's state goes.
    pub progress: mpsc::UnboundedSender<(String, TaskState)>,
    /// Requests to restart the running task, with why (a check's `check_restart`).
    pub restart: mpsc::UnboundedReceiver<String>,
}

impl Supervisor {
    pub async fn run(mut self, task: Task) {
        let name = task.name.clone();
        let interval = Duration::from_secs(u64::from(self.policy.interval_secs));
        let mut history = vec![event(TaskEventKind::Received, "the agent received the allocation", None)];
        let mut restarts = 0u32;
        let mut window = (tokio::time::Instant::now(), 0u32);
        if self.dir.join(DONE_MARKER).exists() {
            // Done for good under an earlier agent (a server that lags may still list it as
            // running): it is never run again. An exec task's exit file says how it ended.
            let exit = crate::sandbox::Ending::read(&self.dir.join("exit"));
            let (code, failed) = match exit {
                Some(crate::sandbox::Ending::Exited(code)) => (Some(code), code != 0),
                Some(_) => (None, true),
                None => (None, false),
            };
            history.push(event(TaskEventKind::Terminated, "finished before the agent restarted", code));
            self.finish(name, dead(history, failed));
            return;
        }
        loop {
            // Events before the task runs (an image pull) are reported as they happen.
            let early = std::sync::Mutex::new(history.clone());
            let (progress, name_now) = (self.progress.clone(), name.clone());
            let on_event = move |e: TaskEvent| {
                let mut events = early.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                events.push(e);
                let _ = progress.send((name_now.clone(), pending(events.clone(), restarts)));
            };
            // This run's own stop: the servers' stop order, or a restart request. One asked for
            // an earlier run (while it was being killed, or during the delay) is not this one's.
            while self.restart.try_recv().is_ok() {}
            let (run_stop, run_stopped) = watch::channel(*self.stop.borrow());
            let run = TaskRun { owner: &self.owner, task: &task, dir: &self.dir, stop: &run_stopped };
            // What an earlier agent left is followed rather than started a second time.
            let recovered = self.driver.recover(run).await;
            let (mut state, handle) = match recovered {
                Some(found) => found,
                None if *self.stop.borrow() => {
                    (dead(vec![event(TaskEventKind::NotStarted, "stopped before it started", None)], false), None)
                }
                None => {
                    let started = self.driver.start(run, &on_event).await;
                    let driver = self.driver.name();
                    if started.1.is_some() {
                        metrics::counter!("helios_agent_task_starts_total", "driver" => driver).increment(1);
                    } else if started.0.failed {
                        metrics::counter!("helios_agent_driver_errors_total", "driver" => driver).increment(1);
                    }
                    started
                }
            };
            let with_history = |state: &mut TaskState, history: &[TaskEvent], restarts: u32| {
                let mut events = history.to_vec();
                events.append(&mut state.events);
                // A task restarting for days must not grow its reports without bound.
                let excess = events.len().saturating_sub(MAX_EVENTS);
                events.drain(..excess);
                state.events = events;
                state.restarts = restarts;
            };
            with_history(&mut state, &history, restarts);
            let _ = self.progress.send((name.clone(), state.clone()));
            let mut restart_asked = None;
            let mut last = match handle {
                Some(handle) => {
                    let running = crate::metrics::RunningTask::start();
                    let ended = self.follow(handle, &run_stop, &mut restart_asked).await;
                    drop(running);
                    let mut done = ended
                        .unwrap_or_else(|e| dead(vec![event(TaskEventKind::DriverFailure, e.to_string(), None)], true));
                    // This run's events alone (the history is joined next).
                    if done.events.iter().any(|e| e.kind == "OOM Killed") {
                        metrics::counter!("helios_agent_oom_kills_total").increment(1);
                    }
                    with_history(&mut done, &history, restarts);
                    done
                }
                None => state,
            };
            if let Some(why) = &restart_asked {
                last.events.push(event(TaskEventKind::RestartSignaled, why.clone(), None));
            }
            if self.stop.has_changed().is_err() {
                // The agent that ran this supervisor is gone (in-process restart): a new agent
                // adopts or restarts the task; this one must not act on it any more.
                return;
            }
            let stopped = *self.stop.borrow();
            let restart = !stopped && (self.job_type != JobType::Batch || last.failed || restart_asked.is_some());
            if !restart {
                self.finish(name, last);
                return;
            }
            if window.0.elapsed() > interval {
                window = (tokio::time::Instant::now(), 0);
            }
            if window.1 >= self.policy.attempts {
                if self.policy.mode == RestartMode::Fail {
                    let why = format!(
                        "{} restarts within {}s: not restarting",
                        self.policy.attempts, self.policy.interval_secs
                    );
                    last.events.push(event(TaskEventKind::NotRestarting, why, None));
                    last.failed = true;
                    self.finish(name, last);
                    return;
                }
                let rest = interval.saturating_sub(window.0.elapsed());
                last.events.push(event(
                    TaskEventKind::Restarting,
                    format!("attempts exhausted: waiting {rest:?}"),
                    None,
                ));
                let _ = self.progress.send((name.clone(), last.clone()));
                if self.interrupted_by_stop(rest).await {
                    self.finish(name, last);
                    return;
                }
                window = (tokio::time::Instant::now(), 0);
            }
            window.1 += 1;
            restarts += 1;
            metrics::counter!("helios_agent_task_restarts_total").increment(1);
            let delay = Duration::from_secs(u64::from(self.policy.delay_secs));
            last.events.push(event(TaskEventKind::Restarting, format!("restart {restarts} in {delay:?}"), None));
            history = last.events.clone();
            let _ = self.progress.send((name.clone(), last.clone()));
            if self.interrupted_by_stop(delay).await {
                self.finish(name, last);
                return;
            }
        }
    }

    /// Waits for the running task to end, passing on the servers' stop order and a restart
    /// request (noted in `restart_asked`) as this run's stop.
    async fn follow(
        &mut self,
        mut handle: crate::runner::TaskHandle,
        run_stop: &watch::Sender<bool>,
        restart_asked: &mut Option<String>,
    ) -> Result<TaskState, tokio::task::JoinError> {
        let mut servers_stop = self.stop.clone();
        let mut stop_passed = false;
        loop {
            tokio::select! {
                ended = &mut handle => return ended,
                () = stop_requested(&mut servers_stop), if !stop_passed => {
                    stop_passed = true;
                    run_stop.send_replace(true);
                }
                Some(why) = self.restart.recv(), if restart_asked.is_none() => {
                    *restart_asked = Some(why);
                    run_stop.send_replace(true);
                }
            }
        }
    }

    /// The task is done for good: mark it (log followers stop at the marker, not at an exit
    /// between restarts) and send its last state.
    fn finish(&self, name: String, state: TaskState) {
        let _ = std::fs::write(self.dir.join(DONE_MARKER), b"");
        let _ = self.progress.send((name, state));
    }

    /// Waits `pause`; true if the servers asked for a stop meanwhile.
    async fn interrupted_by_stop(&mut self, pause: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(pause) => false,
            () = stop_requested(&mut self.stop) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The restart policy under tokio's paused clock: sleeps end at once, and time moves exactly
    //! by the delays the supervisor and the scripted driver wait.

    use std::collections::{BTreeMap, VecDeque};
    use std::sync::Mutex;

    use futures::future::BoxFuture;
    use helios_core::{ExecConfig, Resources, TaskDriver, TaskRunState};
    use tokio::time::Instant;

    use super::*;
    use crate::drivers::{Fingerprint, OnEvent, Started};
    use crate::runner::running;

    /// Each start runs for a second and exits with the next scripted code (0 once the script
    /// runs out); it records when (since the test began) it was started.
    struct Scripted {
        began: Instant,
        exits: Mutex<VecDeque<i32>>,
        starts: Mutex<Vec<Duration>>,
        recovers: Mutex<u32>,
        /// What `recover` finds (once, as a real agent's task is gone once it ended): a task
        /// that runs on and exits with this code.
        left_running: Mutex<Option<i32>>,
        /// How long each run lasts unless stopped.
        run_secs: u64,
    }

    impl Scripted {
        fn new(exits: &[i32]) -> Arc<Scripted> {
            Scripted::leaving(exits, None)
        }

        /// As `new`, with a task an earlier agent left running.
        fn leaving(exits: &[i32], left_running: Option<i32>) -> Arc<Scripted> {
            Arc::new(Scripted {
                began: Instant::now(),
                exits: Mutex::new(exits.iter().copied().collect()),
                starts: Mutex::new(Vec::new()),
                recovers: Mutex::new(0),
                left_running: Mutex::new(left_running),
                run_secs: 1,
            })
        }

        /// Runs of `run_secs` each, which end early (killed) when stopped.
        fn long(exits: &[i32], run_secs: u64) -> Arc<Scripted> {
            let mut scripted = Arc::into_inner(Scripted::new(exits)).expect("new");
            scripted.run_secs = run_secs;
            Arc::new(scripted)
        }

        fn started_at_secs(&self) -> Vec<u64> {
            self.starts.lock().unwrap().iter().map(Duration::as_secs).collect()
        }

        fn runs(&self, code: i32, stop: &watch::Receiver<bool>) -> Started {
            let (run_secs, mut stop) = (self.run_secs, stop.clone());
            let handle = tokio::spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(run_secs)) => {}
                    () = stop_requested(&mut stop) => return dead(vec![event(TaskEventKind::Killed, "stopped", None)], false),
                }
                let mut state =
                    dead(vec![event(TaskEventKind::Terminated, format!("exit code {code}"), Some(code))], code != 0);
                state.state = TaskRunState::Dead;
                state
            });
            (running(vec![event(TaskEventKind::Started, "scripted", None)]), Some(handle))
        }
    }

    impl Driver for Scripted {
        fn name(&self) -> &'static str {
            "exec"
        }

        fn fingerprint(&self) -> BoxFuture<'_, Fingerprint> {
            Box::pin(std::future::ready(Fingerprint::default()))
        }

        fn recover<'a>(&'a self, run: TaskRun<'a>) -> BoxFuture<'a, Option<Started>> {
            *self.recovers.lock().unwrap() += 1;
            let left = self.left_running.lock().unwrap().take();
            Box::pin(std::future::ready(left.map(|code| self.runs(code, run.stop))))
        }

        fn start<'a>(&'a self, run: TaskRun<'a>, _: &'a OnEvent) -> BoxFuture<'a, Started> {
            self.starts.lock().unwrap().push(self.began.elapsed());
            let code = self.exits.lock().unwrap().pop_front().unwrap_or(0);
            Box::pin(std::future::ready(self.runs(code, run.stop)))
        }
    }

    fn task() -> Task {
        Task {
            name: "t".into(),
            driver: TaskDriver::Exec(ExecConfig::new("/bin/true", Vec::new())),
            env: BTreeMap::new(),
            resources: Resources { cpu_mhz: 100, memory_mb: 64 },
            constraints: Vec::new(),
            kill_timeout_secs: 5,
            user: None,
        }
    }

    fn policy(attempts: u32, interval_secs: u32, delay_secs: u32, mode: RestartMode) -> RestartPolicy {
        RestartPolicy { attempts, interval_secs, delay_secs, mode }
    }

    /// A running supervisor: its stop order, the states it sent, and its end.
    struct Running {
        stop: watch::Sender<bool>,
        restart: mpsc::UnboundedSender<String>,
        states: mpsc::UnboundedReceiver<(String, TaskState)>,
        done: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    impl Running {
        /// Every state sent until the supervisor ended; the last is its final one.
        async fn finish(mut self) -> Vec<TaskState> {
            self.done.await.unwrap();
            let mut states = Vec::new();
            while let Ok((_, state)) = self.states.try_recv() {
                states.push(state);
            }
            drop(self.stop);
            states
        }
    }

    fn supervise(driver: Arc<Scripted>, job_type: JobType, policy: RestartPolicy) -> Running {
        supervise_in(tempfile::tempdir().unwrap(), driver, job_type, policy)
    }

    /// Supervises task `t` in `dir`/t.
    fn supervise_in(
        dir: tempfile::TempDir,
        driver: Arc<Scripted>,
        job_type: JobType,
        policy: RestartPolicy,
    ) -> Running {
        let (stop, stop_rx) = watch::channel(false);
        let (progress, states) = mpsc::unbounded_channel();
        let (restart, restart_rx) = mpsc::unbounded_channel();
        let owner = Owner {
            node_id: "n1".into(),
            alloc_id: "a1".into(),
            alloc_name: "job.g[0]".into(),
            job_name: "job".into(),
            group: "g".into(),
            meta: BTreeMap::new(),
            dynamic_ports: BTreeMap::new(),
            group_ports: BTreeMap::new(),
            node: Arc::new(crate::task_env::NodeFacts {
                id: "n1".into(),
                name: "host".into(),
                attributes: BTreeMap::new(),
                meta: BTreeMap::new(),
            }),
        };
        std::fs::create_dir_all(dir.path().join("t")).unwrap();
        let dir_t = dir.path().join("t");
        let supervisor =
            Supervisor { owner, driver, job_type, policy, dir: dir_t, stop: stop_rx, progress, restart: restart_rx };
        let done = tokio::spawn(supervisor.run(task()));
        Running { stop, restart, states, done, _dir: dir }
    }

    /// Waits until `done` holds, looking every 100 ms of the paused clock, for ten minutes of it
    /// at most.
    async fn until(mut done: impl FnMut() -> bool) {
        let looking = async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(600), looking).await.expect("the condition, within ten minutes");
    }

    fn kinds(state: &TaskState) -> Vec<&str> {
        state.events.iter().map(|e| e.kind.as_str()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn fail_mode_restarts_after_each_delay_then_gives_up_with_the_task_failed() {
        let driver = Scripted::new(&[1, 1, 1, 1]);
        let states = supervise(driver.clone(), JobType::Service, policy(2, 60, 5, RestartMode::Fail)).finish().await;
        // Each run takes 1 s, each restart waits 5 s: starts at 0, 6 and 12, then no third restart.
        assert_eq!(driver.started_at_secs(), vec![0, 6, 12]);
        let last = states.last().unwrap();
        assert!(last.failed && last.state == TaskRunState::Dead, "{last:?}");
        assert_eq!(last.restarts, 2);
        assert_eq!(kinds(last).last(), Some(&"Not Restarting"));
        // Each failure was reported as it happened, with the restart it waits for.
        let restarting = states.iter().filter(|s| kinds(s).last() == Some(&"Restarting")).count();
        assert_eq!(restarting, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn delay_mode_waits_out_the_interval_then_starts_over_and_never_fails() {
        let driver = Scripted::new(&[1; 7]);
        let running = supervise(driver.clone(), JobType::Service, policy(2, 60, 5, RestartMode::Delay));
        // Two restarts per 60 s window: 0, then 6 and 12; the third exit (at 13 s) exhausts
        // them: wait out the window (47 s), then the delay: 65, 71; again at 72 s: 120 + 5 = 125,
        // then 131.
        // Looked at every 100 ms: the stop below comes while the seventh run (131-132 s) runs.
        until(|| driver.started_at_secs().len() == 7).await;
        assert_eq!(driver.started_at_secs(), vec![0, 6, 12, 65, 71, 125, 131]);
        running.stop.send(true).unwrap();
        let states = running.finish().await;
        let waited = states.iter().flat_map(|s| &s.events).any(|e| e.message == "attempts exhausted: waiting 47s");
        assert!(waited, "{states:?}");
        let last = states.last().unwrap();
        assert!(!kinds(last).contains(&"Not Restarting"), "{last:?}");
        assert_eq!(last.restarts, 6);
        // A task restarting for days keeps a bounded history.
        assert!(last.events.len() <= MAX_EVENTS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_task_is_restarted_only_when_it_fails() {
        let driver = Scripted::new(&[1, 0]);
        let states = supervise(driver.clone(), JobType::Batch, policy(3, 60, 2, RestartMode::Fail)).finish().await;
        assert_eq!(driver.started_at_secs(), vec![0, 3]);
        let last = states.last().unwrap();
        assert!(!last.failed && last.state == TaskRunState::Dead, "{last:?}");
        assert_eq!(last.restarts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_is_restarted_even_when_it_exits_successfully() {
        let driver = Scripted::new(&[0, 0, 0]);
        let states = supervise(driver.clone(), JobType::Service, policy(2, 600, 1, RestartMode::Fail)).finish().await;
        assert_eq!(driver.started_at_secs(), vec![0, 2, 4]);
        assert!(states.last().unwrap().failed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_during_the_restart_delay_ends_the_task_without_another_start() {
        let driver = Scripted::new(&[1, 1]);
        let mut running = supervise(driver.clone(), JobType::Service, policy(3, 600, 30, RestartMode::Fail));
        // The first run failed and its restart waits out the 30 s delay: stop now.
        let waiting = tokio::time::timeout(Duration::from_secs(600), async {
            while let Some((_, state)) = running.states.recv().await {
                if kinds(&state).last() == Some(&"Restarting") {
                    return;
                }
            }
        });
        waiting.await.expect("the restart's wait, within ten minutes (paused clock)");
        running.stop.send(true).unwrap();
        let states = running.finish().await;
        assert_eq!(driver.started_at_secs(), vec![0]);
        assert_eq!(states.last().unwrap().state, TaskRunState::Dead);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_left_running_is_recovered_and_restarted_when_it_fails() {
        let driver = Scripted::leaving(&[0], Some(1));
        let states = supervise(driver.clone(), JobType::Batch, policy(3, 60, 2, RestartMode::Fail)).finish().await;
        // Asked before each start: the recovered run, then the restart (nothing left by then).
        assert_eq!(*driver.recovers.lock().unwrap(), 2);
        // The recovered run failed at 1 s; its restart started 2 s later and succeeded.
        assert_eq!(driver.started_at_secs(), vec![3]);
        assert!(!states.last().unwrap().failed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_done_under_an_earlier_agent_is_neither_recovered_nor_started() {
        let driver = Scripted::leaving(&[0], Some(0));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("t")).unwrap();
        std::fs::write(dir.path().join("t").join(DONE_MARKER), b"").unwrap();
        let states =
            supervise_in(dir, driver.clone(), JobType::Batch, policy(3, 60, 2, RestartMode::Fail)).finish().await;
        assert_eq!(*driver.recovers.lock().unwrap(), 0);
        assert!(driver.started_at_secs().is_empty());
        assert_eq!(kinds(states.last().unwrap()).last(), Some(&"Terminated"));
    }

    #[tokio::test(start_paused = true)]
    async fn restart_requests_made_for_an_earlier_run_do_not_stop_the_next() {
        let driver = Scripted::long(&[0, 0], 100);
        let running = supervise(driver.clone(), JobType::Service, policy(3, 600, 2, RestartMode::Fail));
        tokio::time::sleep(Duration::from_secs(10)).await;
        // A check that stays critical asks again while the first run is killed.
        for _ in 0..3 {
            running.restart.send("check \"web\" unhealthy".into()).unwrap();
        }
        until(|| driver.started_at_secs().len() == 2).await;
        // 50 s into the second run (paused clock): a stale request would have stopped it at once.
        tokio::time::sleep(Duration::from_secs(50)).await;
        assert_eq!(driver.started_at_secs(), vec![0, 12], "the second run is not stopped by the stale requests");
        running.stop.send(true).unwrap();
        let last = running.finish().await.pop().unwrap();
        assert_eq!(last.restarts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_request_stops_the_task_and_starts_it_again_within_the_policy() {
        // A batch task that would run 100 s and succeed: restarted anyway when its check asks.
        let driver = Scripted::long(&[0, 0], 100);
        let running = supervise(driver.clone(), JobType::Batch, policy(1, 600, 2, RestartMode::Fail));
        // Under the paused clock a sleep sets the script's time (here: 10 s into the first run);
        // it waits for nothing.
        tokio::time::sleep(Duration::from_secs(10)).await;
        running.restart.send("check \"web\" unhealthy".into()).unwrap();
        until(|| driver.started_at_secs().len() == 2).await;
        // Stopped at 10 s, restarted after the 2 s delay.
        assert_eq!(driver.started_at_secs(), vec![0, 12]);
        // The policy's only restart is used: a second request ends the task, failed.
        tokio::time::sleep(Duration::from_secs(5)).await;
        running.restart.send("check \"web\" unhealthy".into()).unwrap();
        let states = running.finish().await;
        let last = states.last().unwrap();
        assert!(kinds(last).contains(&"Restart Signaled"), "{last:?}");
        assert_eq!(kinds(last).last(), Some(&"Not Restarting"));
        assert_eq!(driver.started_at_secs(), vec![0, 12]);
    }
}

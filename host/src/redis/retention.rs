//! Housekeeping on Redis: finished task runs, jobs that failed for good and export dead letters
//! (not those being replayed) are deleted by age (`[retention]`), at most
//! [`BATCH`](crate::housekeeping::BATCH) of each kind (per installation for jobs and exports) per
//! pass, each step one script.

use super::Redis;
use super::exports::RedisExportState;
use super::history::RedisHistory;
use super::jobs::RedisJobs;
use crate::config::RetentionConfig;
use crate::housekeeping::{BATCH, DAY_MS, Prune, Pruned};

/// What sluice keeps on Redis for operators.
pub struct RedisRetention {
    history: RedisHistory,
    jobs: RedisJobs,
    exports: RedisExportState,
}

impl RedisRetention {
    /// On `redis`.
    pub fn new(redis: Redis) -> Self {
        Self {
            history: RedisHistory::new(redis.clone()),
            jobs: RedisJobs::new(redis.clone()),
            exports: RedisExportState::new(redis),
        }
    }
}

impl Prune for RedisRetention {
    fn store(&self) -> &'static str {
        "redis"
    }

    fn shared(&self) -> bool {
        true
    }

    fn prune(&self, retention: &RetentionConfig, now_ms: i64) -> Result<Pruned, String> {
        let before = |days: u64| now_ms - days as i64 * DAY_MS;
        Ok(vec![
            (
                "task_runs",
                self.history
                    .prune(before(retention.task_runs_days), BATCH)
                    .map_err(|e| e.to_string())?,
            ),
            (
                "jobs",
                self.jobs
                    .prune_failed(before(retention.failed_jobs_days), BATCH)
                    .map_err(|e| e.to_string())?,
            ),
            (
                "export_dead_letters",
                self.exports
                    .prune_dead_letters(before(retention.dead_letters_days), BATCH)
                    .map_err(|e| e.to_string())?,
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::source::Cursor;
    use crate::export::state::{Batch, ExportState};
    use crate::redis::testing::TestRedis;
    use crate::schedule::history::{NewRun, TaskHistory, Trigger};
    use crate::schedule::jobs::{JobQueue, Outcome};
    use crate::store::now_ms;

    #[test]
    fn old_finished_runs_failed_jobs_and_dead_letters_go_what_is_running_or_replayed_stays() {
        let test = TestRedis::start();
        let history = RedisHistory::new(test.redis.clone());
        let now = now_ms();
        let old = now - 40 * DAY_MS;
        let run = |scheduled_at: i64, request: Option<i64>| {
            history
                .run_started(&NewRun {
                    installation: "team-1/t",
                    task: "daily",
                    trigger: Trigger::Schedule,
                    scheduled_at,
                    fencing_token: 1,
                    request,
                    holder: "node",
                })
                .unwrap()
        };
        let finished = run(old, None);
        history.run_ended(finished, None).unwrap();
        let request = history.request_run("team-1/t", "daily").unwrap();
        let requested = run(old, Some(request));
        history.run_ended(requested, Some("boom")).unwrap();
        history.missed("team-1/t", "daily", old, "down").unwrap();
        let still_running = run(old, None);
        let recent = run(now, None);
        history.run_ended(recent, None).unwrap();

        let jobs = RedisJobs::new(test.redis.clone());
        for name in ["a", "b"] {
            jobs.enqueue("team-1/j", name, "{}", 0).unwrap();
            let job = jobs.claim("team-1/j", "node", 1, now).unwrap().unwrap();
            jobs.finish(&job.id, "node", 1, Outcome::Failed("gave up"))
                .unwrap();
        }
        jobs.enqueue("team-1/j", "queued", "{}", now).unwrap();

        let mut exports = RedisExportState::new(test.redis.clone());
        exports.register("team-1/s3", 1).unwrap();
        exports.claim("team-1/s3", 1, "node").unwrap();
        for (first, last) in [("1", "5"), ("6", "9")] {
            let batch = Batch::new(
                1,
                Cursor::from_recorded(first.into()),
                Cursor::from_recorded(last.into()),
                now,
            );
            exports.record("team-1/s3", &batch, 1).unwrap();
            exports.dead_letter("team-1/s3", &batch, "404", 1).unwrap();
        }
        exports.request_replay("team-1/s3", Some("6-9")).unwrap();

        let retention = RedisRetention::new(test.redis.clone());
        let config = RetentionConfig::default();
        let pruned = retention.prune(&config, now).unwrap();
        assert_eq!(
            pruned,
            [("task_runs", 3), ("jobs", 0), ("export_dead_letters", 0)],
            "runs of 40 days ago go; jobs and dead letters of today stay"
        );
        let left: Vec<i64> = history
            .runs(None, None, 100)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(left, [still_running, recent]);
        assert!(history.runs(None, Some(request), 10).unwrap().is_empty());
        assert!(
            history
                .runs(Some("team-1/t"), None, 10)
                .unwrap()
                .iter()
                .all(|r| r.id != finished)
        );
        let request_key = test.redis.key(&["tasks", "request", &request.to_string()]);
        let exists: bool = test
            .redis
            .with(|conn| redis::cmd("EXISTS").arg(&request_key).query(conn))
            .unwrap();
        assert!(!exists, "a request whose runs are gone goes too");

        // Forty days on, what failed today is old too; what is asked to be replayed stays.
        let later = retention.prune(&config, now + 40 * DAY_MS).unwrap();
        assert_eq!(
            later,
            [("task_runs", 1), ("jobs", 2), ("export_dead_letters", 1)]
        );
        let statuses: Vec<String> = jobs
            .list(None)
            .unwrap()
            .into_iter()
            .map(|j| j.status)
            .collect();
        assert_eq!(statuses, ["queued"]);
        let letters: Vec<String> = exports
            .dead_letters(None)
            .unwrap()
            .into_iter()
            .map(|l| l.batch)
            .collect();
        assert_eq!(letters, ["6-9"]);
        assert_eq!(
            history.runs(None, None, 100).unwrap().len(),
            1,
            "the running one"
        );
    }
}

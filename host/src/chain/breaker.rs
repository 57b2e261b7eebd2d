//! The circuit breaker of one installation, shared by every worker lane (see
//! [`crate::config::BreakerConfig`] for when it opens and closes). State changes are logged,
//! stored in the installation's plugin log (`sluice logs`), and counted in `/metrics`.

use crate::capabilities::Context;
use crate::capabilities::log::{self, Level};
use crate::config::BreakerConfig;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Whether a call may go to the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Admission {
    /// Closed: call as usual.
    Call,
    /// The cool-down is over: one trial call decides.
    Trial,
    /// Open: do not call; the reason says why, for the events' `on_error` path.
    Refuse(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    /// A trial call is under way (in some lane); other lanes treat the breaker as open.
    Trial,
}

struct State {
    phase: Phase,
    /// Failures since the last success.
    consecutive: u32,
    /// Outcomes of the last `window` calls, `true` for a failure.
    recent: VecDeque<bool>,
    /// The cool-down of the next opening.
    cooldown: Duration,
    /// What the last failure was, for operators.
    last_error: String,
}

pub(super) struct Breaker {
    config: BreakerConfig,
    ctx: Arc<Context>,
    state: Mutex<State>,
    open_gauge: metrics::Gauge,
}

impl Breaker {
    pub(super) fn new(config: BreakerConfig, ctx: Arc<Context>) -> Self {
        let state = State {
            phase: Phase::Closed,
            consecutive: 0,
            recent: VecDeque::with_capacity(config.window as usize),
            cooldown: Duration::from_secs(config.cooldown_seconds),
            last_error: String::new(),
        };
        Self {
            open_gauge: metrics::gauge!("sluice_plugin_breaker_open", "installation" => ctx.installation.to_string()),
            config,
            ctx,
            state: Mutex::new(state),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the next call may go to the plugin; turns an expired open breaker into a trial.
    pub(super) fn admit(&self, now: Instant) -> Admission {
        let mut state = self.state();
        match state.phase {
            Phase::Closed => Admission::Call,
            Phase::Open { until } if now >= until => {
                state.phase = Phase::Trial;
                Admission::Trial
            }
            Phase::Open { .. } | Phase::Trial => Admission::Refuse(self.refusal(&state)),
        }
    }

    /// Why calls are refused, if the breaker is open now.
    pub fn open_reason(&self) -> Option<String> {
        let state = self.state();
        matches!(state.phase, Phase::Open { .. }).then(|| self.refusal(&state))
    }

    fn refusal(&self, state: &State) -> String {
        format!(
            "circuit breaker open for installation {}: the plugin keeps failing ({})",
            self.ctx.installation, state.last_error
        )
    }

    /// Records a call that worked.
    pub(super) fn success(&self) {
        let mut state = self.state();
        match state.phase {
            Phase::Trial => self.close(&mut state),
            Phase::Closed => {
                state.consecutive = 0;
                self.remember(&mut state, false);
            }
            Phase::Open { .. } => {}
        }
    }

    /// Records a failure (see [`BreakerConfig`]) described by `error`.
    pub(super) fn failure(&self, error: &str, now: Instant) {
        let mut state = self.state();
        state.last_error = error.to_owned();
        match state.phase {
            Phase::Trial => {
                let doubled = state.cooldown.saturating_mul(2);
                state.cooldown = doubled.min(Duration::from_secs(self.config.max_cooldown_seconds));
                self.open(&mut state, now, "the trial call failed");
            }
            Phase::Closed => {
                state.consecutive += 1;
                self.remember(&mut state, true);
                let failed = state.recent.iter().filter(|f| **f).count();
                let window = self.config.window as usize;
                if state.consecutive >= self.config.consecutive_failures {
                    let why = format!("{} failures in a row", state.consecutive);
                    self.open(&mut state, now, &why);
                } else if state.recent.len() >= window
                    && failed as f64 >= self.config.failure_rate * window as f64
                {
                    let why = format!("{failed} of the last {window} calls failed");
                    self.open(&mut state, now, &why);
                }
            }
            Phase::Open { .. } => {}
        }
    }

    fn remember(&self, state: &mut State, failed: bool) {
        if state.recent.len() >= self.config.window as usize {
            state.recent.pop_front();
        }
        state.recent.push_back(failed);
    }

    fn open(&self, state: &mut State, now: Instant, why: &str) {
        let cooldown = state.cooldown;
        state.phase = Phase::Open {
            until: now + cooldown,
        };
        state.consecutive = 0;
        state.recent.clear();
        let message = format!(
            "circuit breaker opened after {why}: events take the `on_error` path without calling the plugin for {} s (last error: {})",
            cooldown.as_secs(),
            state.last_error
        );
        self.transition("open", Level::Error, &message);
    }

    fn close(&self, state: &mut State) {
        state.phase = Phase::Closed;
        state.consecutive = 0;
        state.recent.clear();
        state.cooldown = Duration::from_secs(self.config.cooldown_seconds);
        self.transition(
            "closed",
            Level::Info,
            "circuit breaker closed: the trial call worked",
        );
    }

    fn transition(&self, to: &'static str, level: Level, message: &str) {
        log::record(&self.ctx, level, message);
        tracing::warn!(installation = %self.ctx.installation, state = to, "{message}");
        metrics::counter!("sluice_plugin_breaker_transitions_total", "installation" => self.ctx.installation.to_string(), "state" => to)
            .increment(1);
        self.open_gauge.set(if to == "open" { 1.0 } else { 0.0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::Services;

    fn breaker(consecutive_failures: u32, failure_rate: f64, window: u32) -> Breaker {
        let config = BreakerConfig {
            consecutive_failures,
            failure_rate,
            window,
            cooldown_seconds: 10,
            max_cooldown_seconds: 25,
        };
        Breaker::new(config, Context::ungranted("team-1/p", Services::detached()))
    }

    #[test]
    fn consecutive_failures_open_it_and_a_success_resets_the_count() {
        let b = breaker(3, 1.0, 100);
        let t = Instant::now();
        b.failure("e", t);
        b.failure("e", t);
        b.success();
        b.failure("e", t);
        b.failure("e", t);
        assert_eq!(b.admit(t), Admission::Call);
        b.failure("boom", t);
        assert!(matches!(b.admit(t), Admission::Refuse(reason) if reason.contains("boom")));
        assert!(b.open_reason().is_some());
    }

    #[test]
    fn a_failure_rate_over_the_window_opens_it() {
        let b = breaker(100, 0.5, 4);
        let t = Instant::now();
        for failed in [true, false, true] {
            if failed {
                b.failure("e", t)
            } else {
                b.success()
            }
        }
        assert_eq!(b.admit(t), Admission::Call, "the window is not full yet");
        b.success();
        assert_eq!(
            b.admit(t),
            Admission::Call,
            "2 of 4 is the rate: the last was a success"
        );
        b.failure("e", t);
        assert!(
            matches!(b.admit(t), Admission::Refuse(_)),
            "3 of the last 4 failed"
        );
    }

    #[test]
    fn after_the_cool_down_one_trial_closes_or_reopens_with_a_longer_cool_down() {
        let b = breaker(1, 1.0, 100);
        let t = Instant::now();
        b.failure("e", t);
        assert!(matches!(
            b.admit(t + Duration::from_secs(9)),
            Admission::Refuse(_)
        ));
        assert_eq!(b.admit(t + Duration::from_secs(10)), Admission::Trial);
        // Another lane meanwhile: the trial is under way, so it is refused.
        assert!(matches!(
            b.admit(t + Duration::from_secs(10)),
            Admission::Refuse(_)
        ));
        let t2 = t + Duration::from_secs(10);
        b.failure("still failing", t2);
        assert!(matches!(
            b.admit(t2 + Duration::from_secs(19)),
            Admission::Refuse(_)
        ));
        assert_eq!(b.admit(t2 + Duration::from_secs(20)), Admission::Trial);
        let t3 = t2 + Duration::from_secs(20);
        b.failure("still failing", t3);
        // Doubling stops at max_cooldown_seconds (25).
        assert!(matches!(
            b.admit(t3 + Duration::from_secs(24)),
            Admission::Refuse(_)
        ));
        assert_eq!(b.admit(t3 + Duration::from_secs(25)), Admission::Trial);
        b.success();
        assert_eq!(b.admit(t3 + Duration::from_secs(25)), Admission::Call);
        assert!(b.open_reason().is_none());
        // Closing resets the cool-down to its first value.
        b.failure("again", t3);
        assert_eq!(b.admit(t3 + Duration::from_secs(10)), Admission::Trial);
    }
}

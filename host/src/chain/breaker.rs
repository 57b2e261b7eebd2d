//! The health of one installation, shared by every worker lane: its budget of time and errors,
//! and its circuit breaker (see [`crate::config::BreakerConfig`] for when it opens and closes),
//! and the operator's override (disabled: events pass it by untouched). State changes are
//! logged, stored in the installation's plugin log (`sluice logs`), and counted in `/metrics`.

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
    /// Disabled by an operator: events pass by untouched.
    Skip,
}

/// The health of an installation, as operators see it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Health {
    /// `healthy`, `degraded`, `breaker_open` or `disabled`.
    pub state: &'static str,
    /// Why, when it is not healthy.
    pub reason: Option<String>,
    /// The share of its budget left (0 to 1).
    pub budget_left: f64,
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
    /// Why the breaker opened last.
    opened_because: String,
    /// Budget left, in ms of plugin time (negative once overspent).
    budget: f64,
    /// When the budget was last refilled.
    refilled: Instant,
    /// Below half of the budget (until it is back at three quarters).
    degraded: bool,
    /// Disabled by an operator.
    disabled: bool,
}

pub(super) struct Breaker {
    config: BreakerConfig,
    ctx: Arc<Context>,
    state: Mutex<State>,
    open_gauge: metrics::Gauge,
    budget_gauge: metrics::Gauge,
}

impl Breaker {
    pub(super) fn new(config: BreakerConfig, ctx: Arc<Context>) -> Self {
        let state = State {
            phase: Phase::Closed,
            consecutive: 0,
            recent: VecDeque::with_capacity(config.window as usize),
            cooldown: Duration::from_secs(config.cooldown_seconds),
            last_error: String::new(),
            opened_because: String::new(),
            budget: config.budget_ms as f64,
            refilled: Instant::now(),
            degraded: false,
            disabled: false,
        };
        Self {
            open_gauge: metrics::gauge!("sluice_plugin_breaker_open", "installation" => ctx.installation.to_string()),
            budget_gauge: metrics::gauge!("sluice_plugin_budget_left_ratio", "installation" => ctx.installation.to_string()),
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
        if state.disabled {
            return Admission::Skip;
        }
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
            "circuit breaker open for installation {}: {} (last error: {})",
            self.ctx.installation, state.opened_because, state.last_error
        )
    }

    /// The installation's health now.
    pub fn health(&self, now: Instant) -> Health {
        let mut state = self.state();
        self.refill(&mut state, now);
        let budget_left = (state.budget / self.config.budget_ms as f64).clamp(0.0, 1.0);
        let (state_name, reason) = if state.disabled {
            (
                "disabled",
                Some("disabled by an operator: events pass it by".to_owned()),
            )
        } else if !matches!(state.phase, Phase::Closed) {
            ("breaker_open", Some(self.refusal(&state)))
        } else if state.degraded {
            (
                "degraded",
                Some(format!(
                    "it spent more than half of its budget of time and errors ({:.0}% left; last error: {})",
                    budget_left * 100.0,
                    if state.last_error.is_empty() {
                        "none"
                    } else {
                        &state.last_error
                    }
                )),
            )
        } else {
            ("healthy", None)
        };
        Health {
            state: state_name,
            reason,
            budget_left,
        }
    }

    /// Spends `elapsed` of plugin time and `errors` failed events from the budget; opens the
    /// breaker once it is spent, and marks the installation degraded or healthy on the way.
    pub(super) fn spend(&self, elapsed: Duration, errors: u64, now: Instant) {
        let mut state = self.state();
        self.refill(&mut state, now);
        let cost = elapsed.as_secs_f64() * 1e3 + (errors * self.config.error_cost_ms) as f64;
        state.budget -= cost;
        let budget = self.config.budget_ms as f64;
        self.budget_gauge
            .set((state.budget / budget).clamp(0.0, 1.0));
        if !matches!(state.phase, Phase::Closed) {
            return;
        }
        if state.budget <= 0.0 {
            let why = format!(
                "its budget of time and errors was spent ({} ms, refilled at {} ms/s)",
                self.config.budget_ms, self.config.refill_ms_per_second
            );
            if state.last_error.is_empty() {
                state.last_error = "none: it was slow".into();
            }
            self.open(&mut state, now, &why);
        } else if !state.degraded && state.budget < budget / 2.0 {
            state.degraded = true;
            self.transition(
                "degraded",
                Level::Warn,
                &format!(
                    "degraded: it spent more than half of its budget of time and errors ({} ms)",
                    self.config.budget_ms
                ),
            );
        }
    }

    /// Gives back what time has refilled since the last refill, up to the budget; marks a
    /// degraded installation healthy again at three quarters.
    fn refill(&self, state: &mut State, now: Instant) {
        let elapsed = now.saturating_duration_since(state.refilled);
        state.refilled = now;
        let budget = self.config.budget_ms as f64;
        state.budget = (state.budget
            + elapsed.as_secs_f64() * self.config.refill_ms_per_second as f64)
            .min(budget);
        if state.degraded && state.budget >= budget * 0.75 && matches!(state.phase, Phase::Closed) {
            state.degraded = false;
            self.transition(
                "healthy",
                Level::Info,
                "healthy again: its budget of time and errors is back above three quarters",
            );
        }
    }

    /// An operator's override: `disabled` (events pass the installation by, untouched) or
    /// enabled again, closed and with its whole budget.
    pub fn set_disabled(&self, disabled: bool, now: Instant) {
        let mut state = self.state();
        if disabled {
            if !state.disabled {
                state.disabled = true;
                self.transition(
                    "disabled",
                    Level::Warn,
                    "disabled by an operator: events pass it by untouched",
                );
            }
            return;
        }
        let was = (state.disabled, state.phase, state.degraded);
        state.disabled = false;
        state.phase = Phase::Closed;
        state.consecutive = 0;
        state.recent.clear();
        state.cooldown = Duration::from_secs(self.config.cooldown_seconds);
        state.budget = self.config.budget_ms as f64;
        state.refilled = now;
        state.degraded = false;
        if was != (false, Phase::Closed, false) {
            self.transition(
                "enabled",
                Level::Info,
                "enabled by an operator: closed, with its whole budget",
            );
        }
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
        state.degraded = true;
        state.opened_because = why.to_owned();
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
        match to {
            "open" => self.open_gauge.set(1.0),
            "closed" | "enabled" => self.open_gauge.set(0.0),
            _ => {}
        }
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
            ..BreakerConfig::default()
        };
        Breaker::new(config, Context::ungranted("team-1/p", Services::detached()))
    }

    #[test]
    fn slow_calls_and_errors_spend_the_budget_degrade_then_open_it_and_time_gives_it_back() {
        let config = BreakerConfig {
            budget_ms: 1_000,
            refill_ms_per_second: 100,
            error_cost_ms: 100,
            ..BreakerConfig::default()
        };
        let b = Breaker::new(config, Context::ungranted("team-1/p", Services::detached()));
        let t = Instant::now();
        b.spend(Duration::from_millis(400), 0, t);
        assert_eq!(b.health(t).state, "healthy");
        // Errors cost too: 600 - 2 x 100 is below half.
        b.spend(Duration::ZERO, 2, t);
        let health = b.health(t);
        assert_eq!(health.state, "degraded", "{health:?}");
        assert!((health.budget_left - 0.4).abs() < 1e-9, "{health:?}");
        assert_eq!(b.admit(t), Admission::Call, "degraded still runs");
        b.spend(Duration::from_millis(450), 0, t);
        let health = b.health(t);
        assert_eq!(health.state, "breaker_open", "{health:?}");
        assert!(health.reason.unwrap().contains("budget"));
        assert!(matches!(b.admit(t), Admission::Refuse(_)));
        // The cool-down (30 s) refills it: the trial closes the breaker, and it is healthy.
        let later = t + Duration::from_secs(30);
        assert_eq!(b.admit(later), Admission::Trial);
        b.success();
        assert_eq!(b.health(later).state, "healthy");
    }

    #[test]
    fn an_operator_disables_it_events_pass_by_and_enabling_restores_it_whole() {
        let b = breaker(1, 1.0, 100);
        let t = Instant::now();
        b.failure("boom", t);
        assert!(matches!(b.admit(t), Admission::Refuse(_)));
        b.set_disabled(true, t);
        assert_eq!(b.admit(t), Admission::Skip);
        assert_eq!(b.health(t).state, "disabled");
        b.set_disabled(false, t);
        assert_eq!(b.admit(t), Admission::Call, "enabled: closed again");
        let health = b.health(t);
        assert_eq!((health.state, health.budget_left), ("healthy", 1.0));
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

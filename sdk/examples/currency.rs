//! A currency normaliser: the example of `sdk/README.md` ("A complete plugin") that uses a
//! capability (`cache`), a JSON config field (the rate table), drops, a per-batch hook and log
//! lines, with the native tests that check each.

use sluice_sdk::host::{self, Level, cache};
use sluice_sdk::{
    Config, ConfigField, ConfigType, Event, Manifest, Outcome, Plugin, PluginError, Transform,
};
use std::collections::HashMap;

/// Adds `amount_usd` from `amount` and `currency`, with rates from its config.
#[derive(Debug)]
pub struct Currency {
    /// Units of each currency per US dollar.
    rates: HashMap<String, f64>,
    /// Conversions of the current batch, by currency; added to the cache once per batch.
    converted: HashMap<String, i64>,
}

impl Plugin for Currency {
    fn manifest() -> Manifest {
        Manifest::new("currency", env!("CARGO_PKG_VERSION"), "Adds amount_usd")
            .config(vec![
                ConfigField::new(
                    "rates",
                    ConfigType::Json,
                    "Units per US dollar, by currency",
                )
                .required(),
            ])
            .needs(&["cache", "log"])
    }

    fn setup(config: &Config) -> Result<Self, PluginError> {
        let rates: HashMap<String, f64> = config.json("rates")?;
        if rates.values().any(|r| *r <= 0.0) {
            return Err(PluginError::new("rates: every rate must be above 0"));
        }
        Ok(Self {
            rates,
            converted: HashMap::new(),
        })
    }
}

impl Transform for Currency {
    fn transform(&mut self, event: &Event<'_>) -> Outcome {
        let Some(amount) = event.property("amount").and_then(|a| a.as_f64()) else {
            return Outcome::Keep;
        };
        let currency = event
            .property("currency")
            .and_then(|c| c.as_str().map(str::to_uppercase));
        let Some(rate) = currency.as_ref().and_then(|c| self.rates.get(c)) else {
            // An amount nobody can read is worse than none: drop it, with the reason.
            return Outcome::Drop("unknown currency".into());
        };
        *self
            .converted
            .entry(currency.unwrap_or_default())
            .or_default() += 1;
        let mut edit = event.edit();
        edit.set("amount_usd", (amount / rate * 100.0).round() / 100.0);
        Outcome::Edit(edit)
    }

    fn end_batch(&mut self) {
        for (currency, count) in self.converted.drain() {
            if let Err(error) = cache::increment(&format!("converted:{currency}"), count) {
                host::log(Level::Warn, &format!("cannot count conversions: {error}"));
            }
        }
    }
}

sluice_sdk::export_transform!(Currency);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::json;
    use sluice_sdk::testing::{Harness, Recorded, TestEvent};

    fn harness() -> Harness<Currency> {
        Harness::new(json!({"rates": {"USD": 1.0, "EUR": 0.5}})).unwrap()
    }

    fn purchase(amount: f64, currency: &str) -> TestEvent {
        TestEvent::new("purchase")
            .property("amount", amount)
            .property("currency", currency)
    }

    #[test]
    fn converts_and_counts_conversions_once_per_batch() {
        let mut h = harness();
        let stored = h.stored(purchase(10.0, "eur")).unwrap().unwrap();
        assert_eq!(stored.properties["amount_usd"], json!(20.0));
        h.transform_batch(vec![purchase(1.0, "EUR"), purchase(2.0, "USD")])
            .unwrap();
        assert_eq!(h.cache_get("converted:EUR"), Some(b"2".to_vec()));
        assert_eq!(h.cache_get("converted:USD"), Some(b"1".to_vec()));
    }

    #[test]
    fn drops_an_amount_in_a_currency_it_cannot_read() {
        let mut h = harness();
        assert_eq!(
            h.transform(purchase(1.0, "XYZ")),
            Outcome::Drop("unknown currency".into())
        );
        assert_eq!(h.transform(TestEvent::new("pageview")), Outcome::Keep);
    }

    #[test]
    fn a_cache_that_is_down_is_logged_not_fatal() {
        let mut h = harness();
        // A counter that is not a number: the cache refuses to increment it.
        h.cache_set("converted:EUR", b"lots");
        h.stored(purchase(1.0, "EUR")).unwrap();
        let logged: Vec<Recorded> = h.take_recorded();
        assert!(
            matches!(&logged[..], [Recorded::Log(Level::Warn, line)] if line.starts_with("cannot count conversions")),
            "{logged:?}"
        );
    }

    #[test]
    fn a_rate_table_that_is_not_a_table_is_refused_at_setup() {
        let error = Harness::<Currency>::new(json!({"rates": [1, 2]})).unwrap_err();
        assert!(
            error.message.starts_with("config `rates` does not fit"),
            "{}",
            error.message
        );
    }
}

//! A small in-process metrics registry handed to foyer, so the cache can report foyer's own
//! counters (evictions, disk writes, entries the disk tier dropped, bytes per tier) in its stats.

use mixtrics::metrics::{
    BoxedCounter, BoxedCounterVec, BoxedGauge, BoxedGaugeVec, BoxedHistogram, BoxedHistogramVec,
    CounterOps, CounterVecOps, GaugeOps, GaugeVecOps, HistogramOps, HistogramVecOps, RegistryOps,
};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Values by `metric/label…` (the cache name label left out).
#[derive(Debug, Default, Clone)]
pub struct Registry {
    values: Arc<Mutex<HashMap<String, Arc<AtomicU64>>>>,
}

impl Registry {
    fn slot(&self, name: &str, labels: &[Cow<'static, str>]) -> Arc<AtomicU64> {
        // The first label is the cache name; the rest identify the series.
        let mut key = name.to_string();
        for l in labels.iter().skip(1) {
            key.push('/');
            key.push_str(l);
        }
        let mut map = self.values.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key).or_default().clone()
    }

    /// The current value of `metric/label` (0 when foyer never registered it).
    pub fn get(&self, key: &str) -> u64 {
        let map = self.values.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).map_or(0, |v| v.load(Ordering::Relaxed))
    }
}

#[derive(Debug)]
struct Counter(Arc<AtomicU64>);
impl CounterOps for Counter {
    fn increase(&self, val: u64) {
        self.0.fetch_add(val, Ordering::Relaxed);
    }
}
impl GaugeOps for Counter {
    fn increase(&self, val: u64) {
        self.0.fetch_add(val, Ordering::Relaxed);
    }
    fn decrease(&self, val: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(val))
            });
    }
    fn absolute(&self, val: u64) {
        self.0.store(val, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct NoHistogram;
impl HistogramOps for NoHistogram {
    fn record(&self, _val: f64) {}
}

#[derive(Debug)]
struct Vector {
    name: String,
    registry: Registry,
}
impl CounterVecOps for Vector {
    fn counter(&self, labels: &[Cow<'static, str>]) -> BoxedCounter {
        Box::new(Counter(self.registry.slot(&self.name, labels)))
    }
}
impl GaugeVecOps for Vector {
    fn gauge(&self, labels: &[Cow<'static, str>]) -> BoxedGauge {
        Box::new(Counter(self.registry.slot(&self.name, labels)))
    }
}
impl HistogramVecOps for Vector {
    fn histogram(&self, _labels: &[Cow<'static, str>]) -> BoxedHistogram {
        Box::new(NoHistogram)
    }
}

impl RegistryOps for Registry {
    fn register_counter_vec(
        &self,
        name: Cow<'static, str>,
        _desc: Cow<'static, str>,
        _label_names: &'static [&'static str],
    ) -> BoxedCounterVec {
        Box::new(Vector {
            name: name.into_owned(),
            registry: self.clone(),
        })
    }
    fn register_gauge_vec(
        &self,
        name: Cow<'static, str>,
        _desc: Cow<'static, str>,
        _label_names: &'static [&'static str],
    ) -> BoxedGaugeVec {
        Box::new(Vector {
            name: name.into_owned(),
            registry: self.clone(),
        })
    }
    fn register_histogram_vec(
        &self,
        name: Cow<'static, str>,
        _desc: Cow<'static, str>,
        _label_names: &'static [&'static str],
    ) -> BoxedHistogramVec {
        Box::new(Vector {
            name: name.into_owned(),
            registry: self.clone(),
        })
    }
    fn register_histogram_vec_with_buckets(
        &self,
        name: Cow<'static, str>,
        desc: Cow<'static, str>,
        label_names: &'static [&'static str],
        _buckets: Vec<f64>,
    ) -> BoxedHistogramVec {
        self.register_histogram_vec(name, desc, label_names)
    }
}

//! A small bench harness shared by the benches: repeated runs, min/median, `figure` lines.
//!
//! The machines these run on have two noisy cores, so every figure is measured several
//! times and reported as the median (with the minimum beside it), and speed claims are made
//! as ratios against a baseline measured in the same run.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Min and median of several runs.
#[derive(Clone, Copy, Debug)]
pub struct Runs {
    pub min: f64,
    pub median: f64,
}

/// Runs `f` `runs` times (after one warm-up) and summarises what it returns.
pub fn repeat(runs: usize, mut f: impl FnMut() -> f64) -> Runs {
    f();
    summarize((0..runs).map(|_| f()).collect())
}

pub fn summarize(mut values: Vec<f64>) -> Runs {
    values.sort_by(|a, b| a.total_cmp(b));
    Runs {
        min: values[0],
        median: values[values.len() / 2],
    }
}

/// Prints the machine-readable figure line (the median) and a human line with the min.
pub fn figure(name: &str, runs: Runs, unit: &str) {
    println!("figure {name} {} {unit}", fmt(runs.median));
    println!(
        "#      {name}: median {} min {} {unit}",
        fmt(runs.median),
        fmt(runs.min)
    );
}

/// Prints a single-valued figure.
pub fn figure1(name: &str, value: f64, unit: &str) {
    println!("figure {name} {} {unit}", fmt(value));
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Nanoseconds per iteration of `body`, over `iters` iterations.
pub fn ns_per_iter(iters: u64, mut body: impl FnMut(u64)) -> f64 {
    let started = Instant::now();
    for i in 0..iters {
        body(i);
    }
    started.elapsed().as_nanos() as f64 / iters as f64
}

/// The p-th percentile (0..=100) of durations, in microseconds.
pub fn percentile_us(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let idx = ((samples.len() as f64 - 1.0) * p / 100.0).round() as usize;
    samples[idx].as_nanos() as f64 / 1000.0
}

/// The multi-threaded runtime the benches run on: two workers, the cores these machines have.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

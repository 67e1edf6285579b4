//! Summaries, tables and the latency plot.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Duration;

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub scenario: String,
    pub concurrency: usize,
    pub calls: u64,
    pub errors: u64,
    pub throughput: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Against the floor at the same concurrency, measured in the same process run.
    pub throughput_vs_floor: Option<f64>,
    pub p50_minus_floor_us: Option<f64>,
}

impl Run {
    pub fn new(scenario: &str, concurrency: usize, histogram: &Histogram<u64>, errors: u64, seconds: f64) -> Self {
        let q = |p: f64| histogram.value_at_quantile(p) as f64;
        Self {
            scenario: scenario.to_owned(),
            concurrency,
            calls: histogram.len(),
            errors,
            throughput: histogram.len() as f64 / seconds,
            mean_us: histogram.mean(),
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            throughput_vs_floor: None,
            p50_minus_floor_us: None,
        }
    }

    pub fn compare_to(&mut self, floor: &Run) {
        self.throughput_vs_floor = Some(self.throughput / floor.throughput);
        self.p50_minus_floor_us = Some(self.p50_us - floor.p50_us);
    }

    pub fn print(&self) {
        let ratio = self.throughput_vs_floor.map_or("      ".into(), |r| format!("{r:>6.2}"));
        let delta = self.p50_minus_floor_us.map_or("       ".into(), |d| format!("{d:>+7.0}"));
        println!(
            "{:<28} c={:<3} {:>9.0}/s  x floor {ratio}  p50 {:>7.0}us ({delta})  p90 {:>7.0}  p99 {:>7.0}  p99.9 {:>7.0}  errors {}",
            self.scenario,
            self.concurrency,
            self.throughput,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.errors
        );
    }
}

/// Latency (p50 and p99) against concurrency for the floor and keygate, as an SVG.
pub fn latency_plot(floor: &[Run], keygate: &[Run]) -> String {
    let (width, height, left, bottom, top, right) = (720.0, 420.0, 70.0, 50.0, 30.0, 170.0);
    let all = floor.iter().chain(keygate);
    let max_latency = all.clone().map(|r| r.p99_us).fold(1.0, f64::max) * 1.1;
    let max_c = all.map(|r| r.concurrency).max().unwrap_or(1) as f64;
    // Concurrency on a log2 axis: 1, 4, 16, 64 spread evenly.
    let x = |c: usize| left + (c as f64).log2() / max_c.log2().max(1.0) * (width - left - right);
    let y = |us: f64| height - bottom - us / max_latency * (height - bottom - top);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="18" text-anchor="middle" font-size="14">Authorize latency against concurrency (lower is better)</text>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">concurrent calls</text>
<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">latency (µs)</text>
"#,
        width / 2.0,
        height - bottom,
        width - right,
        height - bottom,
        height - bottom,
        (left + width - right) / 2.0,
        height - 12.0,
        height / 2.0,
        height / 2.0,
    );
    for run in floor {
        svg += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            x(run.concurrency),
            height - bottom + 16.0,
            run.concurrency
        );
    }
    for i in 0..=4 {
        let us = max_latency * i as f64 / 4.0;
        svg += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}</text><line x1=\"{left}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n",
            left - 6.0,
            y(us) + 4.0,
            us,
            y(us),
            width - right,
            y(us)
        );
    }
    /// A line of the plot: name, runs, the value plotted, colour, dash pattern.
    type Series<'a> = (&'a str, &'a [Run], fn(&Run) -> f64, &'a str, &'a str);
    let series: [Series<'_>; 4] = [
        ("floor p50", floor, |r| r.p50_us, "#1f77b4", ""),
        ("floor p99", floor, |r| r.p99_us, "#1f77b4", "6 4"),
        ("keygate p50", keygate, |r| r.p50_us, "#d62728", ""),
        ("keygate p99", keygate, |r| r.p99_us, "#d62728", "6 4"),
    ];
    for (i, (name, runs, value, color, dash)) in series.iter().enumerate() {
        let points: Vec<String> = runs.iter().map(|r| format!("{:.1},{:.1}", x(r.concurrency), y(value(r)))).collect();
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" stroke-dasharray=\"{dash}\" points=\"{}\"/>\n",
            points.join(" ")
        );
        let ly = top + 20.0 + i as f64 * 18.0;
        svg += &format!(
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\" stroke-dasharray=\"{dash}\"/><text x=\"{}\" y=\"{}\">{name}</text>\n",
            width - right + 15.0,
            width - right + 45.0,
            width - right + 50.0,
            ly + 4.0
        );
    }
    svg + "</svg>\n"
}

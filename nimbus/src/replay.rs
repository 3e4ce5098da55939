//! `nimbus replay`: scores keep-alive policies on a trace, offline, with the same
//! predictor code the platform uses ([`invoker::predictor`]).

use serde_json::{Value, json};

use invoker::predictor::{self, Policy};

/// Replays the trace in `dir` under each policy; one JSON object per policy
/// (`policy, functions, invocations, cold_starts, cold_start_rate,
/// idle_instance_seconds, idle_mb_seconds`, and `per_function` if asked).
/// Deterministic: the same trace gives the same numbers.
pub fn offline(
    dir: &std::path::Path,
    policies: &[Policy],
    per_function: bool,
) -> anyhow::Result<Value> {
    let functions = predictor::read_trace(dir)?;
    let mut out = Vec::new();
    for &policy in policies {
        let mut total = predictor::Outcome::default();
        let mut each = Vec::new();
        for f in &functions {
            let o = predictor::simulate(f, policy);
            total.invocations += o.invocations;
            total.cold_starts += o.cold_starts;
            total.idle_instance_seconds += o.idle_instance_seconds;
            total.idle_mb_seconds += o.idle_mb_seconds;
            if per_function {
                each.push(json!({"function": f.id, "invocations": o.invocations,
                    "cold_starts": o.cold_starts, "idle_instance_seconds": o.idle_instance_seconds,
                    "idle_mb_seconds": o.idle_mb_seconds}));
            }
        }
        let mut r = json!({
            "policy": policy.to_string(),
            "functions": functions.len(),
            "invocations": total.invocations,
            "cold_starts": total.cold_starts,
            "cold_start_rate": if total.invocations > 0 { total.cold_starts as f64 / total.invocations as f64 } else { 0.0 },
            "idle_instance_seconds": total.idle_instance_seconds,
            "idle_mb_seconds": total.idle_mb_seconds,
        });
        if per_function {
            r["per_function"] = Value::Array(each);
        }
        out.push(r);
    }
    Ok(Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same trace gives the same report, and the columns are read by name.
    #[test]
    fn replay_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let minutes: Vec<String> = (1..=60).map(|m| m.to_string()).collect();
        let row = |f: &str, every: usize| {
            let counts: Vec<String> = (0..60)
                .map(|m| {
                    if m % every == 0 {
                        "3".into()
                    } else {
                        "0".into()
                    }
                })
                .collect();
            format!("o,a,{f},timer,{}", counts.join(","))
        };
        std::fs::write(
            dir.path().join("invocations.csv"),
            format!(
                "HashOwner,HashApp,HashFunction,Trigger,{}\n{}\n{}\n",
                minutes.join(","),
                row("f1", 5),
                row("f2", 1)
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("durations.csv"),
            "HashOwner,HashApp,HashFunction,Average,Count\no,a,f1,250,10\no,a,f2,40,60\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("memory.csv"),
            "HashFunction,HashOwner,HashApp,SampleCount,AverageAllocatedMb\nf1,o,a,1,200\n",
        )
        .unwrap();
        let policies = [
            Policy::None,
            Policy::Fixed(600_000),
            Policy::Hybrid(predictor::DEFAULT_COLD_START_COST_MS),
        ];
        let a = offline(dir.path(), &policies, true).unwrap();
        let b = offline(dir.path(), &policies, true).unwrap();
        assert_eq!(a, b);
        assert_eq!(a[0]["functions"], 2);
        assert_eq!(a[0]["invocations"], 3 * 12 + 3 * 60);
        assert_eq!(a[1]["policy"], "fixed:10m");
        // f1 has its own memory; f2 falls back to 128 MB.
        let f1 = &a[1]["per_function"][0];
        let ratio =
            f1["idle_mb_seconds"].as_f64().unwrap() / f1["idle_instance_seconds"].as_f64().unwrap();
        assert!((ratio - 200.0).abs() < 1e-6, "{f1}");
        assert!(offline(&dir.path().join("missing"), &policies, false).is_err());
    }
}

//! A function written against AWS's official Rust runtime client (`lambda_runtime`),
//! unmodified: Nimbus runs it as a `provided` function whose `bootstrap` is this
//! binary. The integration test `the_official_rust_runtime_client_works_unmodified`
//! deploys it.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

async fn handler(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (payload, ctx) = event.into_parts();
    if payload["fail"] == true {
        return Err("the event asked to fail".into());
    }
    Ok(json!({
        "echo": payload,
        "request_id": ctx.request_id,
        "arn": ctx.invoked_function_arn,
        "deadline_ms": ctx.deadline,
        "function": ctx.env_config.function_name,
        "memory": ctx.env_config.memory,
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handler)).await
}

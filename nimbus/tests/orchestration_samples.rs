//! Step Functions' own sample definitions, run unchanged on `nimbus up` (only the
//! function in each Lambda ARN is one of ours; the ARN's region and account are
//! the sample's). Each sample's functions are one python handler deployed under
//! the sample's names. Also: what Nimbus does not offer is refused by name, and
//! `HeartbeatSeconds` bounds a Task's call.

mod common;

use std::time::{Duration, Instant};

use common::{Api, deploy};
use serde_json::{Value, json};

/// The samples' functions, by the name each is deployed as.
const HANDLER: &str = r#"
import time

class CustomError(Exception):
    pass

def handler(event, context):
    name = context.function_name
    if name == "sfn-hello":
        return "Hello from Lambda"
    if name == "sfn-first":
        return event
    if name == "sfn-on-first":
        return {"matched": "first", "foo": event["foo"]}
    if name == "sfn-on-second":
        return {"matched": "second", "foo": event["foo"]}
    if name == "sfn-next":
        return dict(event, finished=True)
    if name == "sfn-fail":
        raise CustomError("This is a custom error!")
    if name == "sfn-address":
        return {"address": "1 Main St, for " + event["customer"]}
    if name == "sfn-phone":
        return {"phone": "555-0100, for " + event["customer"]}
    if name == "sfn-ship-val":
        parcel = event.get("parcel", event)
        return {"prod": parcel["prod"], "valid": parcel["quantity"] < 1000,
                "courier": event.get("courier")}
    if name == "sfn-iterator":
        it = event["iterator"]
        index = it["index"] + it["step"]
        return {"index": index, "step": it["step"], "count": it["count"],
                "continue": index < it["count"]}
    if name == "sfn-submit-job":
        return {"id": "job-" + str(event["job"]), "ready_at": time.time() + 1.5}
    if name == "sfn-check-job":
        return "SUCCEEDED" if time.time() >= event["ready_at"] else "RUNNING"
    if name == "sfn-slow":
        time.sleep(event.get("sleep", 2.5))
        return "slept"
    return event
"#;

const FUNCTIONS: &[&str] = &[
    "sfn-hello",
    "sfn-first",
    "sfn-on-first",
    "sfn-on-second",
    "sfn-next",
    "sfn-fail",
    "sfn-address",
    "sfn-phone",
    "sfn-ship-val",
    "sfn-iterator",
    "sfn-submit-job",
    "sfn-check-job",
    "sfn-slow",
];

/// A sample's Lambda ARN, as the samples write them.
fn arn(f: &str) -> String {
    format!("arn:aws:lambda:us-east-1:123456789012:function:{f}")
}

/// Each sample: its name, its definition, its input, and what it must end with
/// (the status, and the output or the error).
fn samples() -> Vec<(&'static str, Value, Value, &'static str, Value)> {
    vec![
        // "Hello World" (Pass states).
        (
            "hello-world",
            json!({
                "Comment": "A Hello World example of the Amazon States Language using Pass states",
                "StartAt": "Hello",
                "States": {
                    "Hello": {"Type": "Pass", "Result": "Hello", "Next": "World"},
                    "World": {"Type": "Pass", "Result": "World", "End": true}
                }
            }),
            json!({}),
            "SUCCEEDED",
            json!("World"),
        ),
        // "Hello World" with a Lambda function, as the console's template invokes it.
        (
            "hello-lambda",
            json!({
                "Comment": "A Hello World example of the Amazon States Language using an AWS Lambda function",
                "StartAt": "HelloWorld",
                "States": {
                    "HelloWorld": {
                        "Type": "Task",
                        "Resource": "arn:aws:states:::lambda:invoke",
                        "OutputPath": "$.Payload",
                        "Parameters": {"Payload.$": "$", "FunctionName": format!("{}:$LATEST", arn("sfn-hello"))},
                        "Retry": [{
                            "ErrorEquals": ["Lambda.ServiceException", "Lambda.AWSLambdaException",
                                            "Lambda.SdkClientException", "Lambda.TooManyRequestsException"],
                            "IntervalSeconds": 1, "MaxAttempts": 3, "BackoffRate": 2, "JitterStrategy": "FULL"
                        }],
                        "End": true
                    }
                }
            }),
            json!({"key1": "value1"}),
            "SUCCEEDED",
            json!("Hello from Lambda"),
        ),
        // The Wait state example.
        (
            "wait-state",
            json!({
                "Comment": "An example of the Amazon States Language using wait states",
                "StartAt": "FirstState",
                "States": {
                    "FirstState": {"Type": "Task", "Resource": arn("sfn-first"), "Next": "wait_using_seconds"},
                    "wait_using_seconds": {"Type": "Wait", "Seconds": 1, "Next": "wait_using_timestamp"},
                    "wait_using_timestamp": {"Type": "Wait", "Timestamp": "2015-09-04T01:59:00Z", "Next": "wait_using_timestamp_path"},
                    "wait_using_timestamp_path": {"Type": "Wait", "TimestampPath": "$.expirydate", "Next": "wait_using_seconds_path"},
                    "wait_using_seconds_path": {"Type": "Wait", "SecondsPath": "$.expiryseconds", "Next": "FinalState"},
                    "FinalState": {"Type": "Task", "Resource": arn("sfn-next"), "End": true}
                }
            }),
            json!({"expirydate": "2015-09-04T01:59:00Z", "expiryseconds": 1}),
            "SUCCEEDED",
            json!({"expirydate": "2015-09-04T01:59:00Z", "expiryseconds": 1, "finished": true}),
        ),
        // The Choice state example (its default is a Fail).
        (
            "choice-state",
            choice_sample(),
            json!({"foo": 2}),
            "SUCCEEDED",
            json!({"matched": "second", "foo": 2, "finished": true}),
        ),
        (
            "choice-state-default",
            choice_sample(),
            json!({"foo": 7}),
            "FAILED",
            json!({"error": "DefaultStateError", "cause": "No Matches!"}),
        ),
        // Handling errors: a custom error retried, then caught by name before the
        // reserved names.
        (
            "error-handling",
            json!({
                "Comment": "A Catch example of the Amazon States Language using an AWS Lambda function",
                "StartAt": "CreateAccount",
                "States": {
                    "CreateAccount": {
                        "Type": "Task",
                        "Resource": arn("sfn-fail"),
                        "Retry": [{"ErrorEquals": ["CustomError"], "IntervalSeconds": 1, "MaxAttempts": 1, "BackoffRate": 2.0}],
                        "Catch": [
                            {"ErrorEquals": ["CustomError"], "Next": "CustomErrorFallback"},
                            {"ErrorEquals": ["States.TaskFailed"], "Next": "ReservedTypeFallback"},
                            {"ErrorEquals": ["States.ALL"], "Next": "CatchAllFallback"}
                        ],
                        "End": true
                    },
                    "CustomErrorFallback": {"Type": "Pass", "Result": "This is a fallback from a custom Lambda function exception", "End": true},
                    "ReservedTypeFallback": {"Type": "Pass", "Result": "This is a fallback from a reserved error code", "End": true},
                    "CatchAllFallback": {"Type": "Pass", "Result": "This is a fallback from any error code", "End": true}
                }
            }),
            json!({}),
            "SUCCEEDED",
            json!("This is a fallback from a custom Lambda function exception"),
        ),
        // The Parallel example.
        (
            "parallel",
            json!({
                "Comment": "Parallel Example.",
                "StartAt": "LookupCustomerInfo",
                "States": {
                    "LookupCustomerInfo": {
                        "Type": "Parallel",
                        "End": true,
                        "Branches": [
                            {"StartAt": "LookupAddress", "States": {"LookupAddress": {"Type": "Task", "Resource": arn("sfn-address"), "End": true}}},
                            {"StartAt": "LookupPhone", "States": {"LookupPhone": {"Type": "Task", "Resource": arn("sfn-phone"), "End": true}}}
                        ]
                    }
                }
            }),
            json!({"customer": "ann"}),
            "SUCCEEDED",
            json!([{"address": "1 Main St, for ann"}, {"phone": "555-0100, for ann"}]),
        ),
        // The Map state example: InputPath, ItemsPath, and a ResultPath into the
        // original input.
        (
            "map-state",
            json!({
                "StartAt": "Validate-All",
                "States": {
                    "Validate-All": {
                        "Type": "Map",
                        "InputPath": "$.detail",
                        "ItemsPath": "$.shipped",
                        "MaxConcurrency": 0,
                        "Iterator": {
                            "StartAt": "Validate",
                            "States": {"Validate": {"Type": "Task", "Resource": arn("sfn-ship-val"), "End": true}}
                        },
                        "ResultPath": "$.detail.shipped",
                        "End": true
                    }
                }
            }),
            shipment(),
            "SUCCEEDED",
            json!({
                "ship-date": "2016-03-14T01:59:00Z",
                "detail": {"delivery-partner": "UQS", "shipped": [
                    {"prod": "R31", "valid": false, "courier": null},
                    {"prod": "S39", "valid": true, "courier": null},
                    {"prod": "R31", "valid": true, "courier": null}]}
            }),
        ),
        // The same with ItemSelector and the context object, in the newer form.
        (
            "map-item-selector",
            json!({
                "StartAt": "ExampleMapState",
                "States": {
                    "ExampleMapState": {
                        "Type": "Map",
                        "ItemsPath": "$.detail.shipped",
                        "ItemSelector": {"parcel.$": "$$.Map.Item.Value", "courier.$": "$.detail.delivery-partner"},
                        "MaxConcurrency": 2,
                        "ItemProcessor": {
                            "ProcessorConfig": {"Mode": "INLINE"},
                            "StartAt": "Validate",
                            "States": {"Validate": {"Type": "Task", "Resource": arn("sfn-ship-val"), "End": true}}
                        },
                        "ResultSelector": {"count.$": "States.ArrayLength($)", "items.$": "$"},
                        "ResultPath": "$.validated",
                        "OutputPath": "$.validated",
                        "End": true
                    }
                }
            }),
            shipment(),
            "SUCCEEDED",
            json!({"count": 3, "items": [
                {"prod": "R31", "valid": false, "courier": "UQS"},
                {"prod": "S39", "valid": true, "courier": "UQS"},
                {"prod": "R31", "valid": true, "courier": "UQS"}]}),
        ),
        // "Iterate a loop using Lambda".
        (
            "iterate-a-loop",
            json!({
                "Comment": "Iterator State Machine Example",
                "StartAt": "ConfigureCount",
                "States": {
                    "ConfigureCount": {"Type": "Pass", "Result": {"count": 10, "index": 0, "step": 1}, "ResultPath": "$.iterator", "Next": "Iterator"},
                    "Iterator": {"Type": "Task", "Resource": arn("sfn-iterator"), "ResultPath": "$.iterator", "Next": "IsCountReached"},
                    "IsCountReached": {"Type": "Choice", "Choices": [{"Variable": "$.iterator.continue", "BooleanEquals": true, "Next": "ExampleWork"}], "Default": "Done"},
                    "ExampleWork": {"Comment": "Your application logic, to run a specific number of times", "Type": "Pass", "Result": {"success": true}, "ResultPath": "$.result", "Next": "Iterator"},
                    "Done": {"Type": "Pass", "End": true}
                }
            }),
            json!({}),
            "SUCCEEDED",
            json!({"iterator": {"index": 10, "step": 1, "count": 10, "continue": false}, "result": {"success": true}}),
        ),
        // "Job status poller": submit, then wait and poll until the job is done.
        (
            "job-poller",
            json!({
                "Comment": "An example of the Amazon States Language that submits a job and monitors it until it completes.",
                "StartAt": "Submit Job",
                "States": {
                    "Submit Job": {"Type": "Task", "Resource": arn("sfn-submit-job"), "ResultPath": "$.guid", "Next": "Wait X Seconds"},
                    "Wait X Seconds": {"Type": "Wait", "SecondsPath": "$.wait_time", "Next": "Get Job Status"},
                    "Get Job Status": {"Type": "Task", "Resource": arn("sfn-check-job"), "Next": "Job Complete?", "InputPath": "$.guid", "ResultPath": "$.status"},
                    "Job Complete?": {"Type": "Choice", "Choices": [
                        {"Variable": "$.status", "StringEquals": "FAILED", "Next": "Job Failed"},
                        {"Variable": "$.status", "StringEquals": "SUCCEEDED", "Next": "Get Final Job Status"}],
                        "Default": "Wait X Seconds"},
                    "Job Failed": {"Type": "Fail", "Cause": "Batch Job Failed", "Error": "DescribeJob returned FAILED"},
                    "Get Final Job Status": {"Type": "Task", "Resource": arn("sfn-check-job"), "InputPath": "$.guid", "End": true}
                }
            }),
            json!({"job": 7, "wait_time": 1}),
            "SUCCEEDED",
            json!("SUCCEEDED"),
        ),
        // Input and output processing as the developer guide's example does it.
        (
            "input-output",
            json!({
                "StartAt": "Select",
                "States": {
                    "Select": {
                        "Type": "Pass",
                        "Parameters": {
                            "comment": "Selecting what I care about.",
                            "MyDetails": {"size.$": "$.product.details.size", "exists.$": "$.product.availability", "StaticValue": "foo"}
                        },
                        "ResultPath": "$.selected",
                        "Next": "Echo"
                    },
                    "Echo": {
                        "Type": "Task",
                        "Resource": arn("sfn-first"),
                        "InputPath": "$.selected",
                        "ResultSelector": {"size.$": "$.MyDetails.size", "note.$": "States.Format('{} is {}', $.MyDetails.StaticValue, $.MyDetails.exists)"},
                        "ResultPath": "$.taskresult",
                        "OutputPath": "$.taskresult",
                        "End": true
                    }
                }
            }),
            json!({"product": {"details": {"color": "blue", "size": "small", "material": "cotton"}, "availability": "in stock", "sku": "2317"}}),
            "SUCCEEDED",
            json!({"size": "small", "note": "foo is in stock"}),
        ),
    ]
}

fn choice_sample() -> Value {
    json!({
        "Comment": "An example of the Amazon States Language using a choice state.",
        "StartAt": "FirstState",
        "States": {
            "FirstState": {"Type": "Task", "Resource": arn("sfn-first"), "Next": "ChoiceState"},
            "ChoiceState": {
                "Type": "Choice",
                "Choices": [
                    {"Variable": "$.foo", "NumericEquals": 1, "Next": "FirstMatchState"},
                    {"Variable": "$.foo", "NumericEquals": 2, "Next": "SecondMatchState"}
                ],
                "Default": "DefaultState"
            },
            "FirstMatchState": {"Type": "Task", "Resource": arn("sfn-on-first"), "Next": "NextState"},
            "SecondMatchState": {"Type": "Task", "Resource": arn("sfn-on-second"), "Next": "NextState"},
            "DefaultState": {"Type": "Fail", "Error": "DefaultStateError", "Cause": "No Matches!"},
            "NextState": {"Type": "Task", "Resource": arn("sfn-next"), "End": true}
        }
    })
}

fn shipment() -> Value {
    json!({
        "ship-date": "2016-03-14T01:59:00Z",
        "detail": {
            "delivery-partner": "UQS",
            "shipped": [
                {"prod": "R31", "dest-code": 9511, "quantity": 1344},
                {"prod": "S39", "dest-code": 9511, "quantity": 40},
                {"prod": "R31", "dest-code": 9833, "quantity": 12}
            ]
        }
    })
}

/// The execution once it has stopped, within `secs` of `since`.
async fn ended(api: &Api, id: &str, since: Instant, secs: u64) -> Value {
    loop {
        let e = api.get(&format!("/v1/executions/{id}")).await.body;
        if e["status"] != "RUNNING" {
            return e;
        }
        assert!(
            since.elapsed() < Duration::from_secs(secs),
            "{id} still runs: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create(api: &Api, name: &str, definition: &Value) -> common::Resp {
    api.post(
        "/v1/state-machines",
        json!({"name": name, "definition": definition}),
    )
    .await
}

/// Starts each sample's execution, all at once; then waits for each to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_functions_samples_run_unchanged() {
    let (_p, api, _dir) = common::up(&[]).await;
    for f in FUNCTIONS {
        deploy(
            &api,
            f,
            "python3",
            "index.handler",
            &[("index.py", HANDLER)],
            json!({}),
        )
        .await;
    }
    let mut started = vec![];
    for (name, definition, input, status, expected) in samples() {
        let r = create(&api, name, &definition).await;
        assert_eq!(r.status, 201, "{name}: {r:?}");
        let r = api
            .post(
                &format!("/v1/state-machines/{name}/executions"),
                json!({ "input": input }),
            )
            .await;
        assert_eq!(r.status, 202, "{name}: {r:?}");
        let id = r.body["execution_id"].as_str().unwrap().to_string();
        started.push((name, id, status, expected));
    }
    let t = Instant::now();
    for (name, id, status, expected) in started {
        let e = ended(&api, &id, t, 60).await;
        assert_eq!(e["status"], status, "{name}: {e}");
        if status == "SUCCEEDED" {
            assert_eq!(e["output"], expected, "{name}");
        } else {
            assert_eq!(e["error"], expected["error"], "{name}: {e}");
            assert_eq!(e["cause"], expected["cause"], "{name}: {e}");
        }
    }
}

/// What Nimbus does not offer is refused when the machine is created, with a 400
/// that names the state and the reason; `HeartbeatSeconds` bounds a Task's call
/// (a function sends no heartbeats), as `States.HeartbeatTimeout`, which a
/// `States.Timeout` catcher also matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_features_are_refused_by_name_and_heartbeats_bound_tasks() {
    let (_p, api, _dir) = common::up(&[]).await;
    let one = |state: Value| json!({"StartAt": "S", "States": {"S": state}});
    for (definition, says) in [
        (
            one(json!({"Type": "Task", "Resource": "arn:aws:states:::sns:publish", "End": true})),
            "service integration",
        ),
        (
            one(
                json!({"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken", "End": true}),
            ),
            "service integration",
        ),
        (
            one(
                json!({"Type": "Task", "Resource": "arn:aws:states:us-east-1:123456789012:activity:a", "End": true}),
            ),
            "activity",
        ),
        (
            json!({"QueryLanguage": "JSONata", "StartAt": "S", "States": {"S": {"Type": "Succeed"}}}),
            "JSONata",
        ),
        (
            one(json!({"Type": "Pass", "Assign": {"x": 1}, "End": true})),
            "Assign",
        ),
        (
            one(json!({"Type": "Pass", "Output": {"x": 1}, "End": true})),
            "JSONata",
        ),
        (
            one(json!({"Type": "Map", "ItemReader": {}, "End": true,
                "ItemProcessor": {"StartAt": "I", "States": {"I": {"Type": "Succeed"}}}})),
            "Distributed Map",
        ),
        (
            one(
                json!({"Type": "Task", "Resource": "f", "TimeoutSeconds": 5, "TimeoutSecondsPath": "$.t", "End": true}),
            ),
            "exclude each other",
        ),
    ] {
        let r = create(&api, "nope", &definition).await;
        assert_eq!(r.status, 400, "{definition}: {r:?}");
        assert_eq!(r.error_code(), "InvalidRequest", "{r:?}");
        let msg = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{definition}: {msg}");
        if definition["States"]["S"].is_object() && !msg.contains("QueryLanguage") {
            assert!(msg.contains("state 'S'"), "{msg}");
        }
    }

    deploy(
        &api,
        "sfn-slow",
        "python3",
        "index.handler",
        &[("index.py", HANDLER)],
        json!({"timeout_ms": 10000}),
    )
    .await;
    let definition = json!({
        "StartAt": "Slow",
        "States": {
            "Slow": {"Type": "Task", "Resource": "sfn-slow", "TimeoutSeconds": 8, "HeartbeatSecondsPath": "$.hb",
                     "Catch": [{"ErrorEquals": ["States.Timeout"], "ResultPath": "$.error", "Next": "TimedOut"}],
                     "End": true},
            "TimedOut": {"Type": "Pass", "End": true}
        }
    });
    assert_eq!(create(&api, "slow", &definition).await.status, 201);
    for (hb, outcome) in [(1, "States.HeartbeatTimeout"), (6, "slept")] {
        let r = api
            .post(
                "/v1/state-machines/slow/executions",
                json!({"input": {"sleep": 2, "hb": hb}}),
            )
            .await;
        assert_eq!(r.status, 202, "{r:?}");
        let id = r.body["execution_id"].as_str().unwrap();
        let e = ended(&api, id, Instant::now(), 30).await;
        assert_eq!(e["status"], "SUCCEEDED", "{e}");
        if outcome == "slept" {
            assert_eq!(e["output"], "slept", "{e}");
        } else {
            assert_eq!(e["output"]["error"]["Error"], outcome, "{e}");
        }
    }
}

"""The Lambda-compatible API through unmodified boto3 and the AWS CLI: a whole
function lifecycle. Run by nimbus/tests/lambda_api.rs against `nimbus up`, with
NIMBUS_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION set.
Exits non-zero (with the failing assertion) if anything is off."""
import base64
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import zipfile

import boto3
import botocore.config
import botocore.exceptions

URL = os.environ["NIMBUS_URL"]
lam = boto3.client(
    "lambda",
    endpoint_url=URL,
    config=botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}),
)
NAME = "boto-" + os.urandom(4).hex()


def zip_of(source):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("index.py", source)
    return buf.getvalue()


def step(what):
    print("--", what, flush=True)


def error_code(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"], e.response
    raise AssertionError(f"{fn.__name__} should have failed")


V1 = """
import os
def handler(event, context):
    print("event", json_dumps(event))
    if event.get("fail"):
        raise ValueError("asked to fail")
    return {"v": 1, "event": event, "env": os.environ.get("GREETING"),
            "custom": getattr(context.client_context, "custom", None) if context.client_context else None}
import json
def json_dumps(x):
    return json.dumps(x, sort_keys=True)
"""
V2 = "def handler(event, context):\n    return {'v': 2}\n"
SLOW = "import time\ndef handler(event, context):\n    time.sleep(1.5)\n    return 'slow'\n"

step("create, and wait until Active (boto3's waiter)")
r = lam.create_function(
    FunctionName=NAME,
    Runtime="python3.12",
    Role="arn:aws:iam::123456789012:role/lambda-role",
    Handler="index.handler",
    Code={"ZipFile": zip_of(V1)},
    Description="made by boto3",
    Timeout=10,
    MemorySize=256,
    Environment={"Variables": {"GREETING": "hello"}},
)
assert r["ResponseMetadata"]["HTTPStatusCode"] == 201, r
assert r["State"] == "Pending" and r["LastUpdateStatus"] == "InProgress", r
assert r["Runtime"] == "python3.12" and r["MemorySize"] == 256 and r["Timeout"] == 10, r
arn = r["FunctionArn"]
assert arn.startswith("arn:aws:lambda:") and arn.endswith(":function:" + NAME), arn
lam.get_waiter("function_active_v2").wait(FunctionName=NAME, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
g = lam.get_function(FunctionName=arn)
c = g["Configuration"]
assert c["State"] == "Active" and c["LastUpdateStatus"] == "Successful", c
assert c["Description"] == "made by boto3" and c["Role"].endswith("lambda-role"), c
assert c["Environment"]["Variables"] == {"GREETING": "hello"}, c
assert len(base64.b64decode(c["CodeSha256"])) == 32, c
assert lam.get_function_configuration(FunctionName=NAME)["FunctionName"] == NAME
# The same function through the native API.
import urllib.request

step("invoke with Tail logs and a client context")
ctx = base64.b64encode(json.dumps({"custom": {"who": "boto3"}}).encode()).decode()
r = lam.invoke(FunctionName=NAME, Payload=json.dumps({"x": 1}), LogType="Tail", ClientContext=ctx)
assert r["StatusCode"] == 200 and "FunctionError" not in r, r
assert r["ExecutedVersion"] == "$LATEST", r
body = json.loads(r["Payload"].read())
assert body == {"v": 1, "event": {"x": 1}, "env": "hello", "custom": {"who": "boto3"}}, body
log = base64.b64decode(r["LogResult"]).decode()
lines = log.splitlines()
assert lines[0].startswith("START RequestId: "), log
assert 'event {"x": 1}' in log, log
assert lines[-2].startswith("END RequestId: ") and lines[-1].startswith("REPORT RequestId: "), log
assert "Billed Duration: " in lines[-1] and "Memory Size: 256 MB" in lines[-1], log

step("invoke Event (202) and DryRun (204)")
r = lam.invoke(FunctionName=NAME, InvocationType="Event", Payload=b'{"async": true}')
assert r["StatusCode"] == 202, r
r = lam.invoke(FunctionName=NAME, InvocationType="DryRun")
assert r["StatusCode"] == 204, r

step("a function error: 200 with FunctionError Unhandled and the error document")
r = lam.invoke(FunctionName=NAME, Payload=json.dumps({"fail": True}))
assert r["StatusCode"] == 200 and r["FunctionError"] == "Unhandled", r
doc = json.loads(r["Payload"].read())
assert doc["errorType"] == "ValueError" and doc["errorMessage"] == "asked to fail", doc

step("publish version 1, update the code, publish version 2")
v1 = lam.publish_version(FunctionName=NAME, Description="first")
assert v1["Version"] == "1" and v1["FunctionArn"] == arn + ":1", v1
r = lam.update_function_code(FunctionName=NAME, ZipFile=zip_of(V2))
assert r["LastUpdateStatus"] in ("InProgress", "Successful"), r
lam.get_waiter("function_updated_v2").wait(FunctionName=NAME, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
v2 = lam.publish_version(FunctionName=NAME)
assert v2["Version"] == "2", v2
versions = [v["Version"] for v in lam.list_versions_by_function(FunctionName=NAME)["Versions"]]
assert versions == ["$LATEST", "1", "2"], versions
r = lam.invoke(FunctionName=NAME, Qualifier="1", Payload=b"{}")
assert json.loads(r["Payload"].read())["v"] == 1 and r["ExecutedVersion"] == "1", r
r = lam.invoke(FunctionName=arn + ":2", Payload=b"{}")
assert json.loads(r["Payload"].read()) == {"v": 2}, r

step("an alias with 10 % on version 2: about 200 of 2,000 calls")
a = lam.create_alias(FunctionName=NAME, Name="live", FunctionVersion="1",
                     RoutingConfig={"AdditionalVersionWeights": {"2": 0.1}})
assert a["AliasArn"] == arn + ":live" and a["RoutingConfig"]["AdditionalVersionWeights"] == {"2": 0.1}, a
code, _ = error_code(lam.create_alias, FunctionName=NAME, Name="live", FunctionVersion="1")
assert code == "ResourceConflictException", code
counts = {"1": 0, "2": 0}
lock = threading.Lock()


def calls(n):
    local = boto3.client("lambda", endpoint_url=URL)
    for _ in range(n):
        r = local.invoke(FunctionName=NAME, Qualifier="live", Payload=b"{}")
        with lock:
            counts[r["ExecutedVersion"]] += 1


threads = [threading.Thread(target=calls, args=(250,)) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert sum(counts.values()) == 2000, counts
assert 140 <= counts["2"] <= 260, counts
print("   weights:", counts)
a = lam.update_alias(FunctionName=NAME, Name="live", FunctionVersion="2", RoutingConfig={"AdditionalVersionWeights": {}})
assert a["FunctionVersion"] == "2" and "RoutingConfig" not in a, a
assert [x["Name"] for x in lam.list_aliases(FunctionName=NAME)["Aliases"]] == ["live"]
assert lam.get_alias(FunctionName=NAME, Name="live")["FunctionVersion"] == "2"

step("update the configuration (boto3's function_updated_v2 waiter)")
r = lam.update_function_configuration(FunctionName=NAME, MemorySize=512, Timeout=5, Description="changed")
lam.get_waiter("function_updated_v2").wait(FunctionName=NAME, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
c = lam.get_function_configuration(FunctionName=NAME)
assert (c["MemorySize"], c["Timeout"], c["Description"]) == (512, 5, "changed"), c

step("async settings: retries, event age, a function destination")
dest = "dest-" + os.urandom(3).hex()
lam.create_function(FunctionName=dest, Runtime="python3.12", Role="r", Handler="index.handler",
                    Code={"ZipFile": zip_of(V2)})
lam.get_waiter("function_active_v2").wait(FunctionName=dest, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
e = lam.put_function_event_invoke_config(
    FunctionName=NAME, MaximumRetryAttempts=1, MaximumEventAgeInSeconds=600,
    DestinationConfig={"OnFailure": {"Destination": arn.replace(NAME, dest)}})
assert e["MaximumRetryAttempts"] == 1 and e["MaximumEventAgeInSeconds"] == 600, e
e = lam.get_function_event_invoke_config(FunctionName=NAME)
assert e["DestinationConfig"]["OnFailure"]["Destination"].endswith(":function:" + dest), e

step("reserved concurrency 1: a second call at once is throttled (429)")
slow = "slow-" + os.urandom(3).hex()
lam.create_function(FunctionName=slow, Runtime="python3.12", Role="r", Handler="index.handler",
                    Code={"ZipFile": zip_of(SLOW)}, Timeout=10)
lam.get_waiter("function_active_v2").wait(FunctionName=slow, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
r = lam.put_function_concurrency(FunctionName=slow, ReservedConcurrentExecutions=1)
assert r["ReservedConcurrentExecutions"] == 1, r
assert lam.get_function_concurrency(FunctionName=slow)["ReservedConcurrentExecutions"] == 1
first_result = {}
first = threading.Thread(target=lambda: first_result.update(
    lam.invoke(FunctionName=slow, Payload=b"{}")))
first.start()
import time
time.sleep(0.5)
# While the first call runs (1.5 s), another is refused. On a loaded machine the
# first may not be running yet after 0.5 s: then the second runs, and we try again.
code = resp = None
while first.is_alive():
    try:
        lam.invoke(FunctionName=slow, Payload=b"{}")
    except botocore.exceptions.ClientError as e:
        code, resp = e.response["Error"]["Code"], e.response
        break
first.join()
assert first_result.get("StatusCode") == 200 and "FunctionError" not in first_result, first_result
assert first_result["Payload"].read() == b'"slow"', first_result
assert code == "TooManyRequestsException", (code, resp)
assert resp["ResponseMetadata"]["HTTPStatusCode"] == 429, resp
assert resp.get("Reason") == "ConcurrentInvocationLimitExceeded", resp
lam.delete_function_concurrency(FunctionName=slow)
assert "ReservedConcurrentExecutions" not in lam.get_function_concurrency(FunctionName=slow)

step("account settings, and the list with its marker")
s = lam.get_account_settings()
assert s["AccountUsage"]["FunctionCount"] >= 3 and s["AccountLimit"]["ConcurrentExecutions"] > 0, s
page = lam.list_functions(MaxItems=1)
assert len(page["Functions"]) == 1 and "NextMarker" in page, page
names = [f["FunctionName"] for p in lam.get_paginator("list_functions").paginate() for f in p["Functions"]]
assert {NAME, dest, slow} <= set(names), names
every = [(f["FunctionName"], f["Version"]) for f in lam.list_functions(FunctionVersion="ALL")["Functions"]]
assert (NAME, "$LATEST") in every and (NAME, "1") in every and (NAME, "2") in every, every

step("the AWS CLI: invoke and get-function")
with tempfile.TemporaryDirectory() as d:
    out = os.path.join(d, "out.json")
    cli = [sys.executable, "-m", "awscli", "--endpoint-url", URL, "lambda"]
    # AWS CLI v1 (what pip installs) sends --payload as given.
    p = subprocess.run(cli + ["invoke", "--function-name", NAME, "--payload", '{"from": "cli"}', out],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    meta = json.loads(p.stdout)
    assert meta["StatusCode"] == 200 and meta["ExecutedVersion"] == "$LATEST", meta
    assert json.load(open(out)) == {"v": 2}, open(out).read()
    p = subprocess.run(cli + ["get-function", "--function-name", NAME], capture_output=True, text=True)
    assert p.returncode == 0 and json.loads(p.stdout)["Configuration"]["MemorySize"] == 512, p.stderr

step("errors as the SDKs name them")
code, resp = error_code(lam.get_function, FunctionName="no-such-function")
assert code == "ResourceNotFoundException" and resp["ResponseMetadata"]["HTTPStatusCode"] == 404, resp
code, _ = error_code(lam.create_function, FunctionName=NAME, Runtime="python3.12", Role="r",
                     Handler="index.handler", Code={"ZipFile": zip_of(V2)})
assert code == "ResourceConflictException", code
code, _ = error_code(lam.create_function, FunctionName="x" + NAME, Runtime="java21", Role="r",
                     Handler="a::b", Code={"ZipFile": zip_of(V2)})
assert code == "InvalidParameterValueException", code
code, resp = error_code(lam.invoke, FunctionName=NAME, Payload=b"x" * (7 * 1024 * 1024))
assert code == "RequestTooLargeException" and resp["ResponseMetadata"]["HTTPStatusCode"] == 413, resp
code, resp = error_code(lam.invoke, FunctionName=NAME, Payload=b"not json")
assert code == "InvalidRequestContentException" and resp["ResponseMetadata"]["HTTPStatusCode"] == 400, resp
bad = boto3.client("lambda", endpoint_url=URL, aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                   aws_secret_access_key="wrong" * 8)
code, _ = error_code(bad.list_functions)
assert code == "InvalidSignatureException", code
nobody = boto3.client("lambda", endpoint_url=URL, aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
                      aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
code, _ = error_code(nobody.list_functions)
assert code == "UnrecognizedClientException", code

step("delete, then 404")
for n in (NAME, dest, slow):
    r = lam.delete_function(FunctionName=n)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 204, r
for _ in range(100):
    try:
        lam.get_function(FunctionName=NAME)
        time.sleep(0.1)
    except lam.exceptions.ResourceNotFoundException:
        break
else:
    raise AssertionError("the function is still there")
print("boto3 lifecycle: all passed")

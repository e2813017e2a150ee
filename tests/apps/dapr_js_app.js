// An app on Dapr's Durable Task SDK for JavaScript (@dapr/durabletask-js 1.0), which
// completes work items without a completion token. Run by tests/test_sidecar_sdk_js.py:
//
//   node tests/apps/dapr_js_app.js HOST:PORT RESULT.json
//
// It starts a worker and one orchestration (a chain, a fan-out and an external event
// raised by its client), waits for it and writes its final state to RESULT.json (the
// SDK logs to stdout).
"use strict";

const { TaskHubGrpcClient, TaskHubGrpcWorker } = require("@dapr/durabletask-js");
const { whenAll } = require("@dapr/durabletask-js/task");
const fs = require("node:fs");

const [address, resultPath] = process.argv.slice(2);

function hello(ctx, name) {
  return `Hello ${name}!`;
}

function square(ctx, n) {
  return n * n;
}

const greetings = async function* (ctx, names) {
  const said = [];
  for (const name of names) {
    said.push(yield ctx.callActivity(hello, name));
  }
  const squares = yield whenAll([1, 2, 3].map((n) => ctx.callActivity(square, n)));
  const approval = yield ctx.waitForExternalEvent("approval");
  return { said, squares, approval };
};

async function main() {
  const worker = new TaskHubGrpcWorker(address);
  worker.addOrchestrator(greetings);
  worker.addActivity(hello);
  worker.addActivity(square);
  const client = new TaskHubGrpcClient(address);
  await worker.start();
  try {
    const id = await client.scheduleNewOrchestration(greetings, ["Tokyo", "London"]);
    await client.waitForOrchestrationStart(id, false, 30);
    await client.raiseOrchestrationEvent(id, "approval", { by: "ops" });
    const state = await client.waitForOrchestrationCompletion(id, true, 30);
    fs.writeFileSync(
      resultPath,
      JSON.stringify({
        instanceId: id,
        status: state ? state.runtimeStatus : null,
        output: state ? state.serializedOutput : null,
        failure: state && state.failureDetails ? state.failureDetails.message : null,
      }),
    );
  } finally {
    await client.stop();
    await worker.stop();
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);

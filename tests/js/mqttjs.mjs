// MQTT.js (npm `mqtt`) in Node against a ringcast WebSocket listener.
// Usage: node mqttjs.mjs ws://127.0.0.1:PORT/mqtt
// For MQTT 3.1.1 and 5.0: a retained message, QoS 0, 1 and 2 through a `#` filter, and a `+`
// filter on a second subscriber. Prints one line per check; exits 0 when all pass, 1 on the
// first failure, 2 when the whole run takes longer than RUN_LIMIT_MS.
import mqtt from "mqtt";

const RUN_LIMIT_MS = 20000;
const url = process.argv[2];
if (!url) {
  console.error("usage: node mqttjs.mjs ws://HOST:PORT/mqtt");
  process.exit(1);
}
setTimeout(() => {
  console.error(`timed out after ${RUN_LIMIT_MS} ms`);
  process.exit(2);
}, RUN_LIMIT_MS).unref();

function check(condition, what) {
  if (!condition) {
    throw new Error(`check failed: ${what}`);
  }
  console.log(`ok: ${what}`);
}

function connect(clientId, protocolVersion) {
  return mqtt.connectAsync(url, {
    clientId,
    protocolVersion,
    clean: true,
    reconnectPeriod: 0,
    connectTimeout: 5000,
  });
}

// Resolves with the first `count` messages `client` receives.
function collect(client, count) {
  return new Promise((resolve) => {
    const got = [];
    client.on("message", (topic, payload, packet) => {
      got.push({ topic, payload: payload.toString(), qos: packet.qos, retain: packet.retain });
      if (got.length === count) {
        resolve(got);
      }
    });
  });
}

async function run(version) {
  const root = `js/v${version}`;
  const publisher = await connect(`js-pub-v${version}`, version);
  const subscriber = await connect(`js-sub-v${version}`, version);
  const single = await connect(`js-single-v${version}`, version);
  check(publisher.connected && subscriber.connected, `v${version} connected over WebSocket`);
  await publisher.publishAsync(`${root}/retained`, "kept", { qos: 1, retain: true });
  // The retained one, QoS 0, 1 and 2, and the one for the + filter (also under #), in any
  // order across QoS levels.
  const messages = collect(subscriber, 5);
  const granted = await subscriber.subscribeAsync(`${root}/#`, { qos: 2 });
  check(granted[0].qos === 2, `v${version} SUBACK grants QoS 2`);
  const plus = collect(single, 1);
  await single.subscribeAsync(`${root}/+/one`, { qos: 1 });
  for (const qos of [0, 1, 2]) {
    await publisher.publishAsync(`${root}/q${qos}`, `m${qos}`, { qos });
  }
  await publisher.publishAsync(`${root}/level/one`, "plus", { qos: 1 });
  const got = await messages;
  const kept = got.find((g) => g.topic === `${root}/retained`);
  check(
    got[0] === kept && kept.payload === "kept" && kept.retain,
    `v${version} retained message delivered on subscribe with retain set`,
  );
  for (const qos of [0, 1, 2]) {
    const m = got.find((g) => g.topic === `${root}/q${qos}`);
    check(m && m.payload === `m${qos}` && m.qos === qos, `v${version} QoS ${qos} delivered`);
  }
  const [one] = await plus;
  check(one.topic === `${root}/level/one` && one.payload === "plus", `v${version} + wildcard`);
  await publisher.publishAsync(`${root}/retained`, "", { qos: 1, retain: true });
  await Promise.all([publisher.endAsync(), subscriber.endAsync(), single.endAsync()]);
}

try {
  await run(4);
  await run(5);
  console.log("all passed");
  process.exit(0);
} catch (error) {
  console.error(error.message ?? error);
  process.exit(1);
}

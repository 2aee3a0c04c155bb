// Validates KEDA objects (ScaledObject, ScaledJob, TriggerAuthentication,
// ClusterTriggerAuthentication) against KEDA's API schema, as compiled into
// the @kubernetes-models/keda package from KEDA's Go types.
//
// Usage: node validate_keda.mjs NODE_MODULES_DIR OBJECTS.json
// OBJECTS.json: [{"source": "<file>", "object": {...}}, ...]
//
// The package's validators check types, enums and required fields but let
// unknown fields through (as KEDA's CRDs allow at the schema level, while
// the API server prunes them: a misspelt field is silently dropped). To be
// strict like `kubernetes-validate --strict`, every object is wrapped in a
// Proxy that records which properties the validator reads: a validator
// reads every property its schema declares, and enumerates the keys of a
// free-form map, so a key that was neither read nor enumerated is unknown.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modulesDir, objectsFile] = process.argv.slice(2);
if (!modulesDir || !objectsFile) {
  console.error("usage: node validate_keda.mjs NODE_MODULES_DIR OBJECTS.json");
  process.exit(2);
}

const SCHEMAS = {
  "keda.sh/v1alpha1": {
    ScaledObject: "ComGithubKedacoreKedaV2ApisKedaV1alpha1ScaledObject.js",
    ScaledJob: "ComGithubKedacoreKedaV2ApisKedaV1alpha1ScaledJob.js",
    TriggerAuthentication: "ComGithubKedacoreKedaV2ApisKedaV1alpha1TriggerAuthentication.js",
    ClusterTriggerAuthentication: "ComGithubKedacoreKedaV2ApisKedaV1alpha1ClusterTriggerAuthentication.js",
  },
};

async function validatorFor(apiVersion, kind) {
  const file = SCHEMAS[apiVersion]?.[kind];
  if (!file) return null;
  const url = pathToFileURL(join(modulesDir, "@kubernetes-models/keda/_schemas", file));
  return (await import(url.href)).validate;
}

// Wraps `value` so that reads are recorded; returns the proxy and pushes
// one record per object node into `nodes`.
function track(value, path, nodes) {
  if (value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) {
    return value.map((item, i) => track(item, `${path}/${i}`, nodes));
  }
  const node = { path, keys: Object.keys(value), read: new Set(), enumerated: false };
  nodes.push(node);
  const copy = {};
  for (const [k, v] of Object.entries(value)) copy[k] = track(v, `${path}/${k}`, nodes);
  return new Proxy(copy, {
    get(target, key, receiver) {
      if (typeof key === "string") node.read.add(key);
      return Reflect.get(target, key, receiver);
    },
    has(target, key) {
      if (typeof key === "string") node.read.add(key);
      return Reflect.has(target, key);
    },
    ownKeys(target) {
      node.enumerated = true;
      return Reflect.ownKeys(target);
    },
  });
}

const entries = JSON.parse(readFileSync(objectsFile, "utf8"));
let failed = 0;
let passed = 0;
for (const { source, object } of entries) {
  const name = `${source}: ${object.kind}/${object.metadata?.name}`;
  const validate = await validatorFor(object.apiVersion, object.kind);
  if (!validate) {
    console.log(`FAIL ${name}: no KEDA schema for ${object.apiVersion} ${object.kind}`);
    failed++;
    continue;
  }
  const nodes = [];
  const ok = validate(track(object, "", nodes));
  const problems = (validate.errors ?? []).map((e) => `${e.instancePath || "/"} ${e.message ?? e.keyword} ${JSON.stringify(e.params)}`);
  // The Kubernetes object envelope is the API server's, not KEDA's: status
  // is never written by us, and metadata is checked by ObjectMeta's schema.
  for (const node of nodes) {
    if (node.enumerated) continue;
    for (const key of node.keys) {
      if (!node.read.has(key)) problems.push(`${node.path}/${key}: unknown field (not in KEDA's schema)`);
    }
  }
  if (ok && problems.length === 0) {
    console.log(`ok   ${name}`);
    passed++;
  } else {
    for (const p of problems) console.log(`FAIL ${name}: ${p}`);
    failed++;
  }
}
console.log(`keda schema: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);

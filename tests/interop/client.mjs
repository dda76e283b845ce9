// A Node.js client of ocrmesh, built from protos/ and third_party/ alone (no ocrmesh code, no
// googleapis package): every RPC of both services, every error detail kind decoded from the
// grpc-status-details-bin trailer, health, reflection v1 and v1alpha, and gRPC-Web through Envoy.
//
// Usage: node client.mjs '{"auth": "H:P", "ocr": "H:P", "gateway": "H:P", "image": PATH,
//                         "user": NAME}'
// Prints one JSON object: {"checks": {name: {"ok": bool, ...facts}}}; exits 0 whatever the checks
// say (the Python test asserts on them), 2 on bad usage.

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, "..", "..");
const INCLUDE = [path.join(ROOT, "protos"), path.join(ROOT, "third_party")];
const CONTRACTS = [
  "ocrmesh/ocr/v1/ocr.proto",
  "ocrmesh/auth/v1/auth.proto",
  "ocrmesh/rpc/v1/error_reason.proto",
  "google/rpc/status.proto",
  "google/rpc/error_details.proto",
];
// Health and reflection are grpc's own protocols: their protos come with grpc's npm packages.
const HEALTH_PROTO = path.join(HERE, "node_modules", "grpc-health-check", "proto", "health", "v1", "health.proto");
const REFLECTION_ROOT = path.join(HERE, "node_modules", "@grpc", "reflection", "build", "proto");
const LOADER = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

const args = JSON.parse(process.argv[2] ?? "null");
if (!args) {
  console.error("usage: node client.mjs '{\"auth\": ..., \"ocr\": ..., \"gateway\": ..., \"image\": ..., \"user\": ...}'");
  process.exit(2);
}

// protobufjs for the messages we decode by hand (Status details, descriptors), from the same files.
const types = new protobuf.Root();
types.resolvePath = (origin, target) => {
  for (const dir of INCLUDE) {
    const candidate = path.join(dir, target);
    if (fs.existsSync(candidate)) return candidate;
  }
  return protobuf.util.path.resolve(origin, target);
};
types.loadSync(CONTRACTS, { keepCase: true });
const Status = types.lookupType("google.rpc.Status");
const ErrorReason = types.lookupEnum("ocrmesh.rpc.v1.ErrorReason");

const contracts = grpc.loadPackageDefinition(protoLoader.loadSync(CONTRACTS, { ...LOADER, includeDirs: INCLUDE }));
const health = grpc.loadPackageDefinition(protoLoader.loadSync(HEALTH_PROTO, LOADER));
const reflection = grpc.loadPackageDefinition(
  protoLoader.loadSync(["grpc/reflection/v1/reflection.proto", "grpc/reflection/v1alpha/reflection.proto"], {
    ...LOADER,
    includeDirs: [REFLECTION_ROOT],
  }),
);

const insecure = grpc.credentials.createInsecure();
const ocr = new contracts.ocrmesh.ocr.v1.OcrService(args.ocr, insecure);
const auth = new contracts.ocrmesh.auth.v1.AuthService(args.auth, insecure);
const checks = {};
const deadline = (seconds) => new Date(Date.now() + seconds * 1000);

function bearer(token) {
  const metadata = new grpc.Metadata();
  if (token) metadata.set("authorization", `Bearer ${token}`);
  return metadata;
}

function unary(client, method, request, metadata = new grpc.Metadata(), seconds = 60) {
  return new Promise((resolve) => {
    client[method](request, metadata, { deadline: deadline(seconds) }, (error, reply) => resolve({ error, reply }));
  });
}

/** Decode a google.rpc.Status's details: {kind: decoded message} for every Any. */
function decodeDetails(status) {
  const details = {};
  for (const any of status.details ?? []) {
    const name = (any.type_url ?? any.typeUrl).split("/").pop();
    details[name] = types.lookupType(name).toObject(types.lookupType(name).decode(any.value), {
      longs: String,
      defaults: true,
    });
  }
  return details;
}

/** What a failed call said: code, message and every detail from the status trailer. */
function richError(error) {
  const raw = error.metadata?.get("grpc-status-details-bin")?.[0];
  const status = raw ? Status.decode(raw) : { details: [] };
  const details = decodeDetails(status);
  const info = details["google.rpc.ErrorInfo"];
  return {
    code: grpc.status[error.code],
    message: error.details,
    details,
    reason: info?.reason ?? null,
    reason_in_contract: info ? `ERROR_REASON_${info.reason}` in ErrorReason.values : false,
    domain: info?.domain ?? null,
  };
}

async function check(name, run) {
  try {
    checks[name] = { ok: true, ...(await run()) };
  } catch (exc) {
    checks[name] = { ok: false, error: String(exc?.stack ?? exc) };
  }
}

function expectError(result) {
  if (!result.error) throw new Error("the call succeeded");
  return richError(result.error);
}

// --- health and reflection ---
for (const [service, address, name] of [
  ["auth", args.auth, "ocrmesh.auth.v1.AuthService"],
  ["ocr", args.ocr, "ocrmesh.ocr.v1.OcrService"],
]) {
  await check(`health_${service}`, async () => {
    const client = new health.grpc.health.v1.Health(address, insecure);
    const { error, reply } = await unary(client, "Check", { service: name }, new grpc.Metadata(), 10);
    if (error) throw error;
    return { status: reply.status };
  });
}

async function reflect(version, request) {
  const Stub = reflection.grpc.reflection[version].ServerReflection;
  const call = new Stub(args.ocr, insecure).ServerReflectionInfo({ deadline: deadline(10) });
  const answer = new Promise((resolve, reject) => {
    call.on("data", (reply) => {
      resolve(reply);
      call.end();
    });
    call.on("error", reject);
  });
  call.write(request);
  return answer;
}

for (const version of ["v1", "v1alpha"]) {
  await check(`reflection_${version}`, async () => {
    const listed = await reflect(version, { list_services: "" });
    const services = listed.list_services_response.service.map((s) => s.name);
    const found = await reflect(version, { file_containing_symbol: "ocrmesh.ocr.v1.OcrService" });
    const files = found.file_descriptor_response.file_descriptor_proto.map((raw) => {
      const file = protobuf.descriptor.FileDescriptorProto.decode(raw);
      return file.name;
    });
    return { services, files };
  });
}

// --- AuthService: every method, and its errors ---
const password = "correct horse 42";
let tokens = null;
await check("auth_register", async () => {
  const { error, reply } = await unary(auth, "Register", { username: args.user, password });
  if (error) throw error;
  return { username: reply.user.username };
});
await check("auth_register_taken", async () =>
  expectError(await unary(auth, "Register", { username: args.user, password })),
);
await check("auth_register_invalid", async () =>
  expectError(await unary(auth, "Register", { username: "x", password: "short" })),
);
await check("auth_login", async () => {
  const { error, reply } = await unary(auth, "Login", { username: args.user, password });
  if (error) throw error;
  tokens = reply.tokens;
  return { token_type: tokens.token_type, user: reply.user.username };
});
await check("auth_login_wrong", async () =>
  expectError(await unary(auth, "Login", { username: args.user, password: "not the password" })),
);
await check("auth_whoami", async () => {
  const { error, reply } = await unary(auth, "WhoAmI", {}, bearer(tokens.access_token));
  if (error) throw error;
  return { username: reply.user.username };
});
await check("auth_whoami_no_token", async () => expectError(await unary(auth, "WhoAmI", {})));
await check("auth_get_jwks", async () => {
  const { error, reply } = await unary(auth, "GetJwks", {});
  if (error) throw error;
  return { kids: reply.keys.map((k) => k.kid), alg: reply.keys[0]?.alg };
});
await check("auth_refresh", async () => {
  const { error, reply } = await unary(auth, "Refresh", { refresh_token: tokens.refresh_token });
  if (error) throw error;
  const rotated = reply.tokens.refresh_token !== tokens.refresh_token;
  tokens = reply.tokens;
  return { rotated };
});

// --- OcrService: every method, and its errors ---
const image = fs.readFileSync(args.image);
const token = bearer(tokens?.access_token);
await check("ocr_recognize", async () => {
  const { error, reply } = await unary(ocr, "Recognize", { image, filename: path.basename(args.image) }, token);
  if (error) throw error;
  const r = reply.result;
  return { text: r.text, lines: r.lines.length, device_kind: r.served_by.device_kind, width: r.width };
});
await check("ocr_recognize_not_an_image", async () =>
  expectError(await unary(ocr, "Recognize", { image: Buffer.from("not an image at all") }, token)),
);
await check("ocr_recognize_no_token", async () => expectError(await unary(ocr, "Recognize", { image })));
await check("ocr_recognize_stream", async () => {
  const reply = await new Promise((resolve, reject) => {
    const call = ocr.RecognizeStream(token, { deadline: deadline(60) }, (error, answer) =>
      error ? reject(error) : resolve(answer),
    );
    call.write({ header: { filename: path.basename(args.image), total_bytes: String(image.length) } });
    for (let at = 0; at < image.length; at += 16384) call.write({ chunk: image.subarray(at, at + 16384) });
    call.end();
  });
  return { text: reply.result.text };
});
await check("ocr_recognize_batch", async () => {
  const replies = await new Promise((resolve, reject) => {
    const got = [];
    const call = ocr.RecognizeBatch(token, { deadline: deadline(60) });
    call.on("data", (reply) => got.push(reply));
    call.on("end", () => resolve(got));
    call.on("error", reject);
    call.write({ item_id: "photo", image });
    call.write({ item_id: "junk", image: Buffer.from("junk") });
    call.end();
  });
  const items = {};
  for (const reply of replies) {
    // The per-item status is an in-band google.rpc.Status: its details decode like the trailer's.
    const details = decodeDetails(reply.status);
    items[reply.item_id] = {
      code: reply.status.code,
      text: reply.result?.text ?? "",
      reason: details["google.rpc.ErrorInfo"]?.reason ?? null,
      violations: details["google.rpc.BadRequest"]?.field_violations ?? [],
    };
  }
  return { items };
});
await check("ocr_get_info", async () => {
  const { error, reply } = await unary(ocr, "GetInfo", {}, token);
  if (error) throw error;
  return {
    workers: reply.workers,
    device_kind: reply.device_kind,
    image_formats: reply.limits.image_formats,
    queued_requests: reply.queued_requests,
  };
});
await check("ocr_busy", async () => {
  // More calls at once than the instance may hold (one running, --queue-depth 1 waiting): the rest
  // are refused at once with RESOURCE_EXHAUSTED, RetryInfo and ErrorInfo.
  const calls = await Promise.all(
    [0, 1, 2, 3].map(() => unary(ocr, "Recognize", { image, filename: "busy.jpg" }, token)),
  );
  const refused = calls.filter((c) => c.error).map((c) => richError(c.error));
  return { answered: calls.filter((c) => !c.error).length, refused };
});
await check("auth_logout", async () => {
  const { error, reply } = await unary(auth, "Logout", { refresh_token: tokens.refresh_token });
  if (error) throw error;
  return { revoked_sessions: reply.revoked_sessions };
});

// --- gRPC-Web through Envoy (what a browser's grpc-web client sends), with and without a token ---
function frame(flag, payload) {
  const out = Buffer.alloc(5 + payload.length);
  out.writeUInt8(flag, 0);
  out.writeUInt32BE(payload.length, 1);
  payload.copy(out, 5);
  return out;
}

async function grpcWeb(method, requestBytes, accessToken) {
  const headers = { "content-type": "application/grpc-web+proto", "x-grpc-web": "1", accept: "application/grpc-web+proto" };
  if (accessToken) headers.authorization = `Bearer ${accessToken}`;
  const response = await fetch(`http://${args.gateway}/${method}`, {
    method: "POST",
    headers,
    body: frame(0, requestBytes),
    signal: AbortSignal.timeout(60000),
  });
  const body = Buffer.from(await response.arrayBuffer());
  const messages = [];
  const trailers = {};
  for (let at = 0; at + 5 <= body.length; ) {
    const flag = body.readUInt8(at);
    const length = body.readUInt32BE(at + 1);
    const payload = body.subarray(at + 5, at + 5 + length);
    if (flag & 0x80) {
      for (const line of payload.toString().split("\r\n").filter(Boolean)) {
        const split = line.indexOf(":");
        trailers[line.slice(0, split).trim().toLowerCase()] = line.slice(split + 1).trim();
      }
    } else {
      messages.push(payload);
    }
    at += 5 + length;
  }
  // A trailers-only answer carries grpc-status in the HTTP headers instead.
  for (const name of ["grpc-status", "grpc-message"]) {
    if (response.headers.get(name) !== null && !(name in trailers)) trailers[name] = response.headers.get(name);
  }
  return { http: response.status, messages, trailers };
}

if (args.gateway) {
  const GetInfoRequest = types.lookupType("ocrmesh.ocr.v1.GetInfoRequest");
  const GetInfoResponse = types.lookupType("ocrmesh.ocr.v1.GetInfoResponse");
  const login = await unary(auth, "Login", { username: args.user, password });
  const webToken = login.reply?.tokens?.access_token;
  const empty = Buffer.from(GetInfoRequest.encode(GetInfoRequest.create({})).finish());
  await check("grpc_web_get_info", async () => {
    const answer = await grpcWeb("ocrmesh.ocr.v1.OcrService/GetInfo", empty, webToken);
    const info = answer.messages.length ? GetInfoResponse.toObject(GetInfoResponse.decode(answer.messages[0])) : null;
    return { http: answer.http, trailers: answer.trailers, instance_id: info?.instance_id ?? null };
  });
  await check("grpc_web_no_token", async () => {
    const answer = await grpcWeb("ocrmesh.ocr.v1.OcrService/GetInfo", empty, null);
    return { http: answer.http, trailers: answer.trailers, messages: answer.messages.length };
  });
}

console.log(JSON.stringify({ checks }));
process.exit(0);

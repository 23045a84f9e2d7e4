// Parses docs/asyncapi.yaml with the AsyncAPI parser (external $refs into proto/schema/
// resolved) and fails on any error diagnostic; then checks that the document names every
// message type and every error code of the committed JSON Schemas, and that each message's
// payload resolved to the schema of its type.
'use strict';

const fs = require('fs');
const path = require('path');
const { Parser, fromFile, DiagnosticSeverity } = require('@asyncapi/parser');

const root = path.resolve(__dirname, '..', '..');
const docPath = path.join(root, 'docs', 'asyncapi.yaml');
const schemaDir = path.join(root, 'proto', 'schema');

function readJson(rel) {
  return JSON.parse(fs.readFileSync(path.join(schemaDir, rel), 'utf8'));
}

function typesIn(dir) {
  return fs
    .readdirSync(path.join(schemaDir, dir))
    .filter((f) => f.endsWith('.json'))
    .map((f) => readJson(path.join(dir, f)).properties.type.const);
}

// A string enum as schemars writes it: `enum`, or `oneOf` of documented `const`s.
function enumValues(schema) {
  if (Array.isArray(schema.enum)) {
    return schema.enum;
  }
  return (schema.oneOf || []).map((s) => s.const);
}

async function main() {
  const problems = [];
  const parser = new Parser();
  const { document, diagnostics } = await fromFile(parser, docPath).parse();
  for (const d of diagnostics) {
    const where = (d.path || []).join('.');
    const line = `${DiagnosticSeverity[d.severity] || d.severity} ${d.code}: ${d.message} at ${where}`;
    if (d.severity === DiagnosticSeverity.Error) {
      problems.push(line);
    } else {
      console.log(`note: ${line}`);
    }
  }
  if (!document) {
    problems.push('the document did not parse');
    report(problems);
    return;
  }

  const text = fs.readFileSync(docPath, 'utf8');
  const clientTypes = typesIn('client');
  const serverTypes = typesIn('server');
  const errorCodes = enumValues(readJson('codes/error_code.json'));
  const endReasons = enumValues(readJson('codes/end_reason.json'));

  // Every WebSocket message type is a message of the ws channel, whose payload is its schema.
  const ws = document.channels().get('ws');
  if (!ws) {
    problems.push('no channel "ws"');
  } else {
    const byName = new Map();
    for (const m of ws.messages().all()) {
      byName.set(m.name(), m);
    }
    for (const t of [...clientTypes, ...serverTypes]) {
      const m = byName.get(t);
      if (!m) {
        problems.push(`message type ${t} is not a message of channel ws`);
        continue;
      }
      const konst = m.payload() && m.payload().properties()['type'] && m.payload().properties()['type'].const();
      if (konst !== t) {
        problems.push(`message ${t}: payload does not resolve to the schema of ${t} (type const ${konst})`);
      }
    }
    for (const name of byName.keys()) {
      if (![...clientTypes, ...serverTypes].includes(name)) {
        problems.push(`channel ws has message ${name} that no schema in proto/schema/ defines`);
      }
    }
  }
  const directions = [
    ['receiveClientMessages', 'receive', clientTypes],
    ['sendServerMessages', 'send', serverTypes],
  ];
  for (const [id, action, types] of directions) {
    const op = document.operations().get(id);
    if (!op) {
      problems.push(`no operation ${id}`);
      continue;
    }
    if (op.action() !== action) {
      problems.push(`operation ${id} is ${op.action()}, expected ${action}`);
    }
    const names = op.messages().all().map((m) => m.name());
    for (const t of types) {
      if (!names.includes(t)) {
        problems.push(`operation ${id} does not list ${t}`);
      }
    }
  }

  for (const id of ['sensorData', 'sessionCreated', 'sessionEnded']) {
    if (!document.channels().get(id)) {
      problems.push(`no channel ${id}`);
    }
  }
  const sensor = document.channels().get('sensorData');
  if (sensor) {
    for (const p of ['deviceId', 'sessionId']) {
      if (!sensor.parameters().get(p)) {
        problems.push(`channel sensorData has no parameter ${p}`);
      }
    }
    const headers = readJson('nats/sensor_headers.json');
    for (const m of sensor.messages().all()) {
      const h = m.headers();
      const names = h ? Object.keys(h.properties()) : [];
      for (const name of Object.keys(headers.properties)) {
        if (!names.includes(name)) {
          problems.push(`sensorData message ${m.id()} lacks header ${name}`);
        }
      }
    }
  }

  // Codes and reasons: named in the document's text (tables and descriptions).
  for (const code of errorCodes) {
    if (!text.includes(code)) {
      problems.push(`error code ${code} is not named in docs/asyncapi.yaml`);
    }
  }
  for (const r of endReasons) {
    if (!text.includes(r)) {
      problems.push(`end reason ${r} is not named in docs/asyncapi.yaml`);
    }
  }
  for (const close of ['1000', '1001', '1008', '1009', '1012']) {
    if (!text.includes(`| ${close} |`)) {
      problems.push(`close code ${close} is not listed in docs/asyncapi.yaml`);
    }
  }
  for (const stream of ['AMR_SENSOR', 'AMR_SESSIONS']) {
    if (!text.includes(stream)) {
      problems.push(`JetStream stream ${stream} is not described in docs/asyncapi.yaml`);
    }
  }

  report(problems, clientTypes.length + serverTypes.length, errorCodes.length);
}

function report(problems, types, codes) {
  if (problems.length > 0) {
    console.error(`docs/asyncapi.yaml: ${problems.length} problem(s):`);
    for (const p of problems) {
      console.error(`  - ${p}`);
    }
    process.exit(1);
  }
  console.log(`docs/asyncapi.yaml parses; it names all ${types} message types and ${codes} error codes`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

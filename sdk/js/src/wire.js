// The batch, outcome and patch encodings of the sluice plugin contract (wit/README.md), in
// JavaScript: what the Rust SDK does with `sluice_abi::wire` and `sluice_abi::patch`.

const utf8 = new TextDecoder('utf-8', { fatal: true });
const encoder = new TextEncoder();
const ABSENT = 0xffffffff;
const FIELDS = 6;
const FIXED = 32 + FIELDS * 4 + 4;

/** Patch targets and modes. */
export const Target = { properties: 0, set: 1, setOnce: 2, ip: 3 };
export const Mode = { set: 0, setIfAbsent: 1, remove: 2 };

/** The events of a batch: envelope, text fields and the patch earlier plugins left. */
export function readBatch(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const count = view.getUint32(0, true);
  const events = new Array(count);
  let at = 4;
  for (let i = 0; i < count; i++) {
    const len = view.getUint32(at, true);
    at += 4;
    events[i] = readEvent(bytes.subarray(at, at + len));
    at += len;
  }
  return events;
}

function readEvent(body) {
  if (body.length < FIXED) throw new Error('truncated event');
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const texts = new Array(FIELDS);
  let at = FIXED;
  for (let i = 0; i < FIELDS; i++) {
    const len = view.getUint32(32 + 4 * i, true);
    if (len === ABSENT) {
      texts[i] = null;
      continue;
    }
    texts[i] = utf8.decode(body.subarray(at, at + len));
    at += len;
  }
  const patchLen = view.getUint32(32 + 4 * FIELDS, true);
  return {
    uuid: body.subarray(0, 16),
    teamId: Number(view.getBigUint64(16, true)),
    timestampMs: Number(view.getBigInt64(24, true)),
    texts,
    patch: patchLen === ABSENT ? null : body.subarray(at, at + patchLen),
  };
}

const HEX = Array.from({ length: 256 }, (_, b) => b.toString(16).padStart(2, '0'));

/** `bytes` (16) as a uuid's text. */
export function uuidText(b) {
  const h = (i) => HEX[b[i]];
  return h(0) + h(1) + h(2) + h(3) + '-' + h(4) + h(5) + '-' + h(6) + h(7) + '-' + h(8) + h(9) + '-'
    + h(10) + h(11) + h(12) + h(13) + h(14) + h(15);
}

/** A uuid's text as its 16 bytes. */
export function uuidBytes(text) {
  const hex = String(text).replace(/-/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new Error(`\`${text}\` is not a uuid`);
  const bytes = new Uint8Array(16);
  for (let i = 0; i < 16; i++) bytes[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return bytes;
}

/** The ops of an encoded patch. */
export function readPatch(patch) {
  const view = new DataView(patch.buffer, patch.byteOffset, patch.byteLength);
  const count = view.getUint32(0, true);
  const ops = [];
  let at = 4;
  for (let i = 0; i < count; i++) {
    const target = patch[at];
    const mode = patch[at + 1];
    const keyLen = view.getUint32(at + 2, true);
    at += 6;
    const key = utf8.decode(patch.subarray(at, at + keyLen));
    at += keyLen;
    const valueLen = view.getUint32(at, true);
    at += 4;
    let value;
    if (valueLen !== ABSENT) {
      value = JSON.parse(utf8.decode(patch.subarray(at, at + valueLen)));
      at += valueLen;
    }
    ops.push({ target, mode, key, value });
  }
  return ops;
}

/**
 * Applies `patch` to `properties` (an object, changed in place) and `ip`, as the host does:
 * `$set` / `$set_once` ops edit `properties.$set` / `properties.$set_once` (made objects first),
 * and `setIfAbsent` there also counts the event's top-level `topSet` / `topSetOnce`. Returns the ip.
 */
export function applyPatch(properties, ip, topSet, topSetOnce, patch) {
  for (const op of readPatch(patch)) {
    if (op.target === Target.ip) {
      if (op.mode === Mode.remove) ip = null;
      else if (!(op.mode === Mode.setIfAbsent && ip != null)) ip = op.value;
      continue;
    }
    let object = properties;
    let top = null;
    if (op.target !== Target.properties) {
      const name = op.target === Target.set ? '$set' : '$set_once';
      const current = properties[name];
      if (current === null || typeof current !== 'object' || Array.isArray(current)) properties[name] = {};
      object = properties[name];
      top = op.target === Target.set ? topSet : topSetOnce;
    }
    if (op.mode === Mode.remove) delete object[op.key];
    else if (op.mode === Mode.set) object[op.key] = op.value;
    else if (!(op.key in object) && !(top && op.key in top)) object[op.key] = op.value;
  }
  return ip;
}

/** Bytes that start with a count of their items (`u32`), gathered in parts and joined once. */
class CountedList {
  constructor() {
    this.parts = [];
    this.count = 0;
    this.size = 4;
  }

  add(bytes) {
    this.parts.push(bytes);
    this.size += bytes.length;
  }

  finish() {
    const out = new Uint8Array(this.size);
    new DataView(out.buffer).setUint32(0, this.count, true);
    let at = 4;
    for (const part of this.parts) {
      out.set(part, at);
      at += part.length;
    }
    return out;
  }
}

/** Builds a patch. */
export class PatchWriter extends CountedList {
  push(target, mode, key, value) {
    const keyBytes = encoder.encode(key);
    const head = new Uint8Array(6);
    head[0] = target;
    head[1] = mode;
    new DataView(head.buffer).setUint32(2, keyBytes.length, true);
    this.add(head);
    this.add(keyBytes);
    if (mode === Mode.remove) {
      const absent = new Uint8Array(4);
      new DataView(absent.buffer).setUint32(0, ABSENT, true);
      this.add(absent);
    } else {
      this.add(lengthPrefixed(encoder.encode(JSON.stringify(value))));
    }
    this.count++;
  }
}

/** Builds an outcome list, one outcome per event in order. */
export class OutcomeWriter extends CountedList {
  tagged(tag, bytes) {
    this.add(Uint8Array.of(tag));
    if (bytes) this.add(lengthPrefixed(bytes));
    this.count++;
  }

  keep() {
    this.tagged(0);
  }

  drop(reason) {
    this.tagged(1, encoder.encode(reason));
  }

  replace(encodedEvent) {
    this.add(Uint8Array.of(2));
    this.add(encodedEvent);
    this.count++;
  }

  error(message, retryable) {
    this.add(Uint8Array.of(3, retryable ? 1 : 0));
    this.add(lengthPrefixed(encoder.encode(message)));
    this.count++;
  }

  patch(patch) {
    this.tagged(4, patch);
  }
}

function lengthPrefixed(bytes) {
  const out = new Uint8Array(4 + bytes.length);
  new DataView(out.buffer).setUint32(0, bytes.length, true);
  out.set(bytes, 4);
  return out;
}

/** An event (its fields, no patch) encoded with its length prefix, as `replace` takes it. */
export function encodeEvent({ uuid, teamId, timestampMs, texts }) {
  const encoded = texts.map((t) => (t === null || t === undefined ? null : encoder.encode(t)));
  const bodyLen = FIXED + encoded.reduce((n, b) => n + (b ? b.length : 0), 0);
  const out = new Uint8Array(4 + bodyLen);
  const view = new DataView(out.buffer);
  view.setUint32(0, bodyLen, true);
  out.set(uuid, 4);
  view.setBigUint64(20, BigInt(teamId), true);
  view.setBigInt64(28, BigInt(timestampMs), true);
  encoded.forEach((b, i) => view.setUint32(36 + 4 * i, b ? b.length : ABSENT, true));
  view.setUint32(36 + 4 * FIELDS, ABSENT, true);
  let at = 4 + FIXED;
  for (const b of encoded) {
    if (!b) continue;
    out.set(b, at);
    at += b.length;
  }
  return out;
}

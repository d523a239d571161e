// A small JSON parser that reports errors instead of trapping.
//
// AssemblyScript cannot catch exceptions: `throw` and failed assertions abort the module. The JSON
// libraries for AssemblyScript report bad input that way, which would turn a typo in the plugin
// configuration into a trap of the VM. This parser returns null and sets `error` instead.

export enum Kind { Null, Bool, Number, String, Array, Object }

export class JsonValue {
  kind: Kind;
  bool: bool = false;
  num: f64 = 0;
  str: string = "";
  items: JsonValue[] = []; // array elements, or object values (in the order of `keys`)
  keys: string[] = [];     // object keys, in document order

  constructor(kind: Kind) {
    this.kind = kind;
  }

  /** The value under `key` of an object, or null. The last one wins for duplicate keys. */
  get(key: string): JsonValue | null {
    for (let i = this.keys.length - 1; i >= 0; i--) {
      if (this.keys[i] == key) return this.items[i];
    }
    return null;
  }

  kindName(): string {
    switch (this.kind) {
      case Kind.Null: return "null";
      case Kind.Bool: return "a boolean";
      case Kind.Number: return "a number";
      case Kind.String: return "a string";
      case Kind.Array: return "a list";
      default: return "an object";
    }
  }
}

const MAX_DEPTH = 64;

export class JsonParser {
  error: string = "";
  private pos: i32 = 0;
  private depth: i32 = 0;

  constructor(private text: string) {}

  /** The parsed document, or null with `error` set (message and character offset). */
  parse(): JsonValue | null {
    const value = this.value();
    if (value === null) return null;
    this.space();
    if (this.pos < this.text.length) return this.fail("unexpected text after the JSON value");
    return value;
  }

  private fail(message: string): JsonValue | null {
    if (this.error.length == 0) this.error = message + " at character " + this.pos.toString();
    return null;
  }

  private peek(): i32 {
    return this.pos < this.text.length ? this.text.charCodeAt(this.pos) : -1;
  }

  private space(): void {
    while (this.pos < this.text.length) {
      const c = this.text.charCodeAt(this.pos);
      if (c != 0x20 && c != 0x09 && c != 0x0a && c != 0x0d) break;
      this.pos++;
    }
  }

  private literal(word: string): bool {
    if (this.text.substr(this.pos, word.length) != word) return false;
    this.pos += word.length;
    return true;
  }

  private value(): JsonValue | null {
    this.space();
    const c = this.peek();
    if (c == -1) return this.fail("unexpected end of input");
    if (c == 0x7b /* { */) return this.object();
    if (c == 0x5b /* [ */) return this.array();
    if (c == 0x22 /* " */) {
      const s = this.string();
      if (s === null) return null;
      const v = new JsonValue(Kind.String);
      v.str = s;
      return v;
    }
    if (c == 0x2d /* - */ || (c >= 0x30 && c <= 0x39)) return this.number();
    if (this.literal("true")) { const v = new JsonValue(Kind.Bool); v.bool = true; return v; }
    if (this.literal("false")) return new JsonValue(Kind.Bool);
    if (this.literal("null")) return new JsonValue(Kind.Null);
    return this.fail("unexpected character '" + String.fromCharCode(c) + "'");
  }

  private object(): JsonValue | null {
    if (++this.depth > MAX_DEPTH) return this.fail("nested too deeply");
    this.pos++; // {
    const obj = new JsonValue(Kind.Object);
    this.space();
    if (this.peek() == 0x7d /* } */) { this.pos++; this.depth--; return obj; }
    while (true) {
      this.space();
      if (this.peek() != 0x22) return this.fail("expected a quoted key");
      const key = this.string();
      if (key === null) return null;
      this.space();
      if (this.peek() != 0x3a /* : */) return this.fail("expected ':'");
      this.pos++;
      const v = this.value();
      if (v === null) return null;
      obj.keys.push(key);
      obj.items.push(v);
      this.space();
      const c = this.peek();
      this.pos++;
      if (c == 0x2c /* , */) continue;
      if (c == 0x7d /* } */) break;
      this.pos--;
      return this.fail("expected ',' or '}'");
    }
    this.depth--;
    return obj;
  }

  private array(): JsonValue | null {
    if (++this.depth > MAX_DEPTH) return this.fail("nested too deeply");
    this.pos++; // [
    const arr = new JsonValue(Kind.Array);
    this.space();
    if (this.peek() == 0x5d /* ] */) { this.pos++; this.depth--; return arr; }
    while (true) {
      const v = this.value();
      if (v === null) return null;
      arr.items.push(v);
      this.space();
      const c = this.peek();
      this.pos++;
      if (c == 0x2c /* , */) continue;
      if (c == 0x5d /* ] */) break;
      this.pos--;
      return this.fail("expected ',' or ']'");
    }
    this.depth--;
    return arr;
  }

  private string(): string | null {
    this.pos++; // opening quote
    let out = "";
    let start = this.pos;
    while (true) {
      if (this.pos >= this.text.length) { this.fail("unterminated string"); return null; }
      const c = this.text.charCodeAt(this.pos);
      if (c == 0x22) break;
      if (c < 0x20) { this.fail("control character in string"); return null; }
      if (c != 0x5c /* \ */) { this.pos++; continue; }
      out += this.text.substring(start, this.pos);
      this.pos++;
      const e = this.peek();
      this.pos++;
      if (e == 0x22) out += "\"";
      else if (e == 0x5c) out += "\\";
      else if (e == 0x2f) out += "/";
      else if (e == 0x62) out += "\b";
      else if (e == 0x66) out += "\f";
      else if (e == 0x6e) out += "\n";
      else if (e == 0x72) out += "\r";
      else if (e == 0x74) out += "\t";
      else if (e == 0x75 /* u */) {
        let code: i32 = 0;
        for (let i = 0; i < 4; i++) {
          const h = this.peek();
          let d: i32 = -1;
          if (h >= 0x30 && h <= 0x39) d = h - 0x30;
          else if (h >= 0x61 && h <= 0x66) d = h - 0x61 + 10;
          else if (h >= 0x41 && h <= 0x46) d = h - 0x41 + 10;
          if (d < 0) { this.fail("bad \\u escape"); return null; }
          code = code * 16 + d;
          this.pos++;
        }
        out += String.fromCharCode(code); // UTF-16 code unit; surrogate pairs combine naturally
      } else { this.pos--; this.fail("bad escape"); return null; }
      start = this.pos;
    }
    out += this.text.substring(start, this.pos);
    this.pos++; // closing quote
    return out;
  }

  private digits(): i32 {
    const start = this.pos;
    while (this.peek() >= 0x30 && this.peek() <= 0x39) this.pos++;
    return this.pos - start;
  }

  private number(): JsonValue | null {
    const start = this.pos;
    if (this.peek() == 0x2d) this.pos++;
    if (this.peek() == 0x30) this.pos++;
    else if (this.digits() == 0) return this.fail("bad number");
    if (this.peek() == 0x2e /* . */) {
      this.pos++;
      if (this.digits() == 0) return this.fail("bad number");
    }
    if (this.peek() == 0x65 || this.peek() == 0x45 /* e E */) {
      this.pos++;
      if (this.peek() == 0x2b || this.peek() == 0x2d) this.pos++;
      if (this.digits() == 0) return this.fail("bad number");
    }
    const v = new JsonValue(Kind.Number);
    v.num = F64.parseFloat(this.text.substring(start, this.pos));
    return v;
  }
}

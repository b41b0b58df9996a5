"""Seeded generator of JSON Schemas shaped like the ones real applications send: objects of
named fields with nested objects, arrays of objects, enums, $defs/$ref (also recursive),
Optional fields as anyOf with null (Pydantic's form), string formats, patterns, length and
numeric bounds, tuples (prefixItems), maps (additionalProperties) and consts."""
import random

WORDS = ["id", "name", "title", "email", "age", "price", "tags", "items", "address", "city",
         "zip", "country", "status", "created_at", "updated", "score", "owner", "children",
         "count", "enabled", "kind", "notes", "phone", "uuid", "ip", "date", "time", "meta",
         "labels", "total", "unit", "qty", "ratio", "level", "url", "priority", "color"]

PATTERNS = [r"^[a-z]{2,8}$", r"^[A-Z][a-z]+$", r"^\d{3}-\d{4}$", r"^[0-9a-f]{6}$",
            r"^(red|green|blue)$", r"^[A-Z]{2}[0-9]{2}$", r"^\w+@\w+\.com$", r"ab+c",
            r"^[^\s]{1,10}$", r"^v\d+\.\d+(\.\d+)?$"]

FORMATS = ["date", "date-time", "time", "uuid", "email", "ipv4"]


class Gen:
    def __init__(self, seed):
        self.r = random.Random(seed)
        self.defs = {}

    def leaf(self):
        r = self.r
        k = r.choice(["string", "string", "integer", "number", "boolean", "enum", "format",
                      "pattern", "intrange", "numrange", "const", "strlen"])
        if k == "string":
            return {"type": "string"}
        if k == "integer":
            return {"type": "integer"}
        if k == "number":
            return {"type": "number"}
        if k == "boolean":
            return {"type": "boolean"}
        if k == "enum":
            return {"enum": r.sample(["low", "mid", "high", "x y", "ünï", "a\"b", 1, 2.5, None, True],
                                     r.randint(1, 4))}
        if k == "format":
            return {"type": "string", "format": r.choice(FORMATS)}
        if k == "pattern":
            return {"type": "string", "pattern": r.choice(PATTERNS)}
        if k == "intrange":
            lo = r.randint(-500, 500)
            s = {"type": "integer", "minimum": lo}
            if r.random() < 0.7:
                s["maximum"] = lo + r.randint(0, 3000)
            if r.random() < 0.3:
                s = {"type": "integer", "exclusiveMaximum": r.randint(-50, 50)}
            return s
        if k == "numrange":
            lo = r.choice([0, -1, 1, -100, 2])
            return {"type": "number", "minimum": lo, "maximum": lo + r.choice([1, 10, 1000])}
        if k == "const":
            return {"const": r.choice(["fixed", 42, True, {"a": [1, 2]}])}
        lo = r.randint(0, 5)
        return {"type": "string", "minLength": lo, "maxLength": lo + r.randint(0, 20)}

    def obj(self, depth, n_lo=1, n_hi=6):
        r = self.r
        n = r.randint(n_lo, n_hi)
        names = r.sample(WORDS, n)
        props = {nm: self.any(depth + 1) for nm in names}
        req = [nm for nm in names if r.random() < 0.6]
        s = {"type": "object", "properties": props, "required": req}
        if r.random() < 0.5:
            s["additionalProperties"] = False
        if r.random() < 0.3:
            s["title"] = "Model" + str(r.randint(0, 99))
        return s

    def any(self, depth):
        r = self.r
        if depth >= 3:
            return self.leaf()
        k = r.choice(["leaf", "leaf", "leaf", "object", "array", "array_obj", "optional", "ref",
                      "map", "tuple", "anyof", "nullable_type"])
        if k == "leaf":
            return self.leaf()
        if k == "object":
            return self.obj(depth, 1, 4)
        if k == "array":
            s = {"type": "array", "items": self.leaf()}
            if r.random() < 0.5:
                s["minItems"] = r.randint(0, 2)
                s["maxItems"] = s["minItems"] + r.randint(0, 4)
            return s
        if k == "array_obj":
            return {"type": "array", "items": self.obj(depth + 1, 1, 3), "maxItems": r.randint(1, 3)}
        if k == "optional":
            return {"anyOf": [self.any(depth + 1), {"type": "null"}], "default": None}
        if k == "ref":
            name = "Def%d" % len(self.defs)
            self.defs[name] = None
            self.defs[name] = self.obj(depth + 1, 1, 3)
            return {"$ref": "#/$defs/" + name}
        if k == "map":
            return {"type": "object", "additionalProperties": self.leaf(), "maxProperties": 3}
        if k == "tuple":
            return {"type": "array", "prefixItems": [self.leaf(), self.leaf()], "items": False}
        if k == "anyof":
            return {"anyOf": [self.leaf(), self.obj(depth + 1, 1, 2)]}
        return {"type": [r.choice(["string", "integer", "boolean"]), "null"]}

    def schema(self):
        s = self.obj(0, 2, 8)
        if self.r.random() < 0.15:  # a recursive tree, as Pydantic writes self-referencing models
            self.defs["Node"] = {"type": "object", "properties": {
                "value": {"type": "integer"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}, "maxItems": 2}},
                "required": ["value"]}
            s["properties"]["tree"] = {"$ref": "#/$defs/Node"}
        if self.defs:
            s["$defs"] = self.defs
        return s


def schemas(n, seed=0):
    return [Gen(seed * 100003 + i).schema() for i in range(n)]

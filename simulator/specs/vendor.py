"""Writes the spec files the tests validate against, from the providers'
official OpenAPI specs (run from the repository root):

    python3 simulator/specs/vendor.py PATH/twilio_api_v2010.json PATH/vonage-voice.yml

- vonage-voice.json: Vonage's Voice API spec (Nexmo/api-specification
  definitions/voice.yml), converted from YAML to JSON, otherwise unchanged.
- twilio-calls.json: from Twilio's spec (twilio/twilio-oai
  spec/json/twilio_api_v2010.json), the Calls.json path (create and list)
  and every component schema it reaches, unchanged; the rest of the 1.9 MB
  file is left out.
"""

import json
import sys

import yaml

CALLS = "/2010-04-01/Accounts/{AccountSid}/Calls.json"


def refs(node, out):
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            out.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            refs(value, out)
    elif isinstance(node, list):
        for value in node:
            refs(value, out)


def main(twilio_path, vonage_path):
    twilio = json.load(open(twilio_path))
    path = twilio["paths"][CALLS]
    wanted, seen = set(), set()
    refs(path, wanted)
    schemas = twilio["components"]["schemas"]
    while wanted - seen:
        name = (wanted - seen).pop()
        seen.add(name)
        refs(schemas[name], wanted)
    subset = {
        "openapi": twilio["openapi"],
        "info": twilio["info"],
        "x-source": "twilio/twilio-oai spec/json/twilio_api_v2010.json: the Calls.json path and the schemas it reaches",
        "paths": {CALLS: path},
        "components": {"schemas": {name: schemas[name] for name in sorted(seen)}},
    }
    with open("simulator/specs/twilio-calls.json", "w") as f:
        json.dump(subset, f, indent=1, sort_keys=True)
        f.write("\n")
    vonage = yaml.safe_load(open(vonage_path))
    vonage["x-source"] = "Nexmo/api-specification definitions/voice.yml, converted from YAML to JSON"
    with open("simulator/specs/vonage-voice.json", "w") as f:
        json.dump(vonage, f, indent=1, sort_keys=True, default=str)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

// Validate one glTF/GLB file with the Khronos glTF validator (npm package "gltf-validator").
// Usage: node tools/validate_gltf.js FILE [VALIDATOR_MODULE_DIR]
// Prints the validator's report as JSON on stdout; exit 0 when it ran (read issues.numErrors), 1 when it could not.
"use strict";
const fs = require("fs");
const moduleDir = process.argv[3] || process.env.DREAMPERP_GLTF_VALIDATOR || "gltf-validator";
const validator = require(moduleDir);
const data = new Uint8Array(fs.readFileSync(process.argv[2]));
validator
  .validateBytes(data, { maxIssues: 0, writeTimestamp: false })
  .then((report) => {
    process.stdout.write(JSON.stringify(report));
  })
  .catch((error) => {
    process.stderr.write(`gltf-validator failed: ${error}\n`);
    process.exit(1);
  });

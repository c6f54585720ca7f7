// An unmodified tuf-js client (no imagectl code): refresh the metadata from a trusted root, look a target up
// through the delegations, download it into DIR and print {"ok", "path", "bytes"} or {"ok": false, "error",
// "message"} as JSON. Exit 0 on success, 1 when tuf-js refused or failed.
//
//   node download.mjs METADATA_URL TARGETS_URL TRUSTED_ROOT TARGET_PATH WORK_DIR
import fs from 'node:fs';
import path from 'node:path';
import { Updater } from 'tuf-js';

const [metadataBaseUrl, targetBaseUrl, trustedRoot, targetPath, work] = process.argv.slice(2);
const metadataDir = path.join(work, 'metadata');
const targetDir = path.join(work, 'targets');
fs.mkdirSync(metadataDir, { recursive: true });
fs.mkdirSync(targetDir, { recursive: true });
if (!fs.existsSync(path.join(metadataDir, 'root.json'))) {
  fs.copyFileSync(trustedRoot, path.join(metadataDir, 'root.json'));
}
try {
  const updater = new Updater({ metadataBaseUrl, targetBaseUrl, metadataDir, targetDir });
  await updater.refresh();
  const info = await updater.getTargetInfo(targetPath);
  if (!info) {
    throw Object.assign(new Error(`no target ${targetPath}`), { name: 'TargetNotFound' });
  }
  const out = await updater.downloadTarget(info, path.join(targetDir, path.basename(targetPath)));
  console.log(JSON.stringify({ ok: true, path: out, bytes: fs.statSync(out).size }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: e.constructor.name, message: String(e.message) }));
  process.exit(1);
}

// Build the browser editor: bundle src/*.js with esbuild into dist/, copy the
// pages and styles, and stamp asset URLs with a content hash (?v=...) so a
// browser never mixes an old bundle with a new page (chunks loaded by the
// bundles carry the hash in their names). Deterministic: the
// output depends only on the sources and the pinned package versions (no
// timestamps, no absolute paths), so the committed dist/ can be checked.
//
//   node build.mjs            rebuild dist/
//   node build.mjs --check    fail if dist/ differs from a fresh build
import { build } from 'esbuild';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync, existsSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const src = join(here, 'src');
const dist = join(here, 'dist');
const check = process.argv.includes('--check');

const ENTRIES = ['editor.js', 'home.js'];
const COPY = ['index.html', 'editor.html', 'style.css', 'favicon.svg'];

async function buildInto(out) {
  mkdirSync(out, { recursive: true });
  const result = await build({
    entryPoints: ENTRIES.map((e) => join(src, e)),
    outdir: out,
    bundle: true,
    minify: true,
    format: 'esm',
    // The preview (Markdown renderer, sanitizer, highlighter) is imported
    // dynamically and becomes its own chunk, named by content hash.
    splitting: true,
    chunkNames: '[name]-[hash]',
    target: ['es2020'],
    charset: 'utf8',
    legalComments: 'none',
    sourcemap: false,
    absWorkingDir: here,
    logLevel: 'warning',
    write: false,
  });
  const files = new Map();
  for (const f of result.outputFiles) files.set(relative(out, f.path), Buffer.from(f.contents));
  for (const name of COPY) files.set(name, readFileSync(join(src, name)));
  const hash = (name) => createHash('sha256').update(files.get(name)).digest('hex').slice(0, 12);
  for (const page of ['index.html', 'editor.html']) {
    const html = files.get(page).toString('utf8').replace(/\/static\/([\w.-]+)\?v=dev/g, (m, name) => {
      if (!files.has(name)) throw new Error(`${page} references missing /static/${name}`);
      return `/static/${name}?v=${hash(name)}`;
    });
    files.set(page, Buffer.from(html, 'utf8'));
  }
  for (const [name, data] of files) writeFileSync(join(out, name), data);
  return files;
}

function listFiles(dir) {
  if (!existsSync(dir)) return [];
  return readdirSync(dir).filter((n) => statSync(join(dir, n)).isFile()).sort();
}

if (check) {
  const tmp = mkdtempSync(join(tmpdir(), 'collab-frontend-'));
  try {
    const fresh = await buildInto(tmp);
    const problems = [];
    const committed = listFiles(dist);
    for (const [name, data] of fresh) {
      const p = join(dist, name);
      if (!existsSync(p)) problems.push(`missing: dist/${name}`);
      else if (!readFileSync(p).equals(data)) problems.push(`stale: dist/${name}`);
    }
    for (const name of committed) if (!fresh.has(name)) problems.push(`unexpected: dist/${name}`);
    // Chunk names carry a content hash: a changed chunk is a new file, which
    // must be added to git too (in a git checkout; elsewhere nothing to check).
    try {
      const untracked = execFileSync('git', ['ls-files', '--others', '--exclude-standard', '--', 'dist'], { cwd: here, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      for (const f of untracked.split('\n').filter(Boolean)) problems.push(`not added to git: ${f} (git add it)`);
    } catch (e) {
      /* not a git checkout */
    }
    if (problems.length) {
      console.error(`frontend/dist is out of date; run frontend/build.sh and commit dist/:\n  ${problems.join('\n  ')}`);
      process.exit(1);
    }
    console.log('frontend/dist is up to date');
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
} else {
  for (const name of listFiles(dist)) rmSync(join(dist, name));
  const files = await buildInto(dist);
  for (const [name, data] of [...files].sort()) console.log(`  dist/${name}  ${(data.length / 1024).toFixed(1)} KiB`);
}

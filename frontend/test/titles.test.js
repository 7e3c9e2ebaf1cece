// The default title (the first heading) as the server finds it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { firstHeading, HEAD_CHARS } from '../src/titles.js';

test('the first heading outside code fences, within the head of the document', () => {
  assert.equal(firstHeading('intro\n\n```\n# not a heading\n```\n## Fox notes 🦊 ##\n# Later'), 'Fox notes 🦊');
  assert.equal(firstHeading('#no space\nplain'), null);
  assert.equal(firstHeading(`${'x'.repeat(HEAD_CHARS + 10)}\n# too far`), null);
  assert.equal(firstHeading('#   spaced\tout  #'), 'spaced out');
  assert.equal(firstHeading('~~~\n# fenced\n~~~\r\n# Grüße 👋🏽'), 'Grüße 👋🏽');
});

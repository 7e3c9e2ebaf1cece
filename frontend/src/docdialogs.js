// The two questions both pages ask before changing a document: its new
// name (Rename…) and whether to move it to the trash. Each builds a modal
// <dialog>, makes the HTTP call itself (so a refusal is shown where the
// question was asked, with the dialog still open) and resolves once done:
// with the server's answer, or null when the person cancelled.

import { DOC_NAME_RE, el } from './common.js';
import { renameDoc, trashDoc, failureText } from './docapi.js';

/** A modal dialog: heading, text, an optional field, an error line, Cancel and a main button. */
function buildDialog({ id, heading, text, field = null, action, danger = false }) {
  const dialog = el('dialog', 'dialog');
  dialog.id = id;
  const form = el('form');
  form.method = 'dialog';
  form.noValidate = true;
  const h = el('h2', '', heading);
  h.id = `${id}-title`;
  dialog.setAttribute('aria-labelledby', h.id);
  form.append(h, el('p', 'muted', text));
  if (field) form.append(field);
  const error = el('p', 'form-error');
  error.id = `${id}-error`;
  error.setAttribute('role', 'alert');
  error.hidden = true;
  const cancel = el('button', 'btn', 'Cancel');
  cancel.type = 'button';
  cancel.value = 'cancel';
  const ok = el('button', danger ? 'btn btn-danger' : 'btn btn-primary', action);
  ok.type = 'submit';
  ok.id = `${id}-ok`;
  const actions = el('div', 'dialog-actions');
  actions.append(cancel, ok);
  form.append(error, actions);
  dialog.append(form);
  document.body.append(dialog);
  const showError = (msg) => {
    error.textContent = msg || '';
    error.hidden = !msg;
  };
  return { dialog, form, cancel, ok, showError };
}

/** Show `parts.dialog` until `submit()` resolves to a non-null answer, or the person cancels (null). */
function ask(parts, submit) {
  const { dialog, form, cancel, ok, showError } = parts;
  return new Promise((resolve) => {
    let answer = null;
    cancel.addEventListener('click', () => dialog.close());
    dialog.addEventListener('close', () => {
      dialog.remove();
      resolve(answer);
    });
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      if (ok.disabled) return;
      ok.disabled = true;
      showError('');
      try {
        answer = await submit(showError);
      } finally {
        ok.disabled = false;
      }
      if (answer !== null) dialog.close();
    });
    dialog.showModal();
  });
}

/** Ask for a new name for `doc` and rename it. Resolves to the new name, or null. */
export function renameDialog({ doc, title = null, token = null }) {
  const input = el('input');
  input.type = 'text';
  input.id = 'rename-input';
  input.value = doc;
  input.maxLength = 128;
  input.spellcheck = false;
  input.autocomplete = 'off';
  input.setAttribute('aria-label', 'New name');
  const what = title && title !== doc ? `“${title}” (${doc})` : doc;
  const parts = buildDialog({
    id: 'rename-dialog',
    heading: 'Rename document',
    text: `A new name for ${what}: its address changes, and links to the old name keep working (they lead to the new one).`,
    field: input,
    action: 'Rename',
  });
  queueMicrotask(() => input.select());
  return ask(parts, async (showError) => {
    const name = input.value.trim();
    if (!DOC_NAME_RE.test(name)) {
      showError('Use 1-128 letters, digits, ".", "_" or "-" (not starting with ".").');
      return null;
    }
    if (name === doc) {
      showError('That is its name already: type a new one.');
      return null;
    }
    const r = await renameDoc(doc, name, { token });
    if (!r.ok) {
      showError(failureText('rename it', r));
      return null;
    }
    return name;
  });
}

/** Ask whether to move `doc` to the trash, and do it. Resolves to the server's answer ({id, deleted, purge_at}), or null. */
export function trashDialog({ doc, title = null, token = null }) {
  const what = title && title !== doc ? `“${title}”` : doc;
  const parts = buildDialog({
    id: 'trash-dialog',
    heading: `Move ${what} to the trash?`,
    text: 'It leaves the document list and whoever has it open is told. Anyone who may edit it can restore it '
      + 'from the Trash on the home page until it is purged for good.',
    action: 'Move to trash',
    danger: true,
  });
  queueMicrotask(() => parts.cancel.focus());
  return ask(parts, async (showError) => {
    const r = await trashDoc(doc, { token });
    if (!r.ok) {
      showError(failureText('move it to the trash', r));
      return null;
    }
    return r.body || { id: doc };
  });
}

// Drafts: everything a person types into an editor is kept in localStorage until the server
// has accepted it, so a failed request, a closed tab or a server restart loses nothing.

const PREFIX = 'vdgx.draft.';

export function loadDraft(key) {
  try {
    const raw = localStorage.getItem(PREFIX + key);
    return raw === null ? null : JSON.parse(raw);
  } catch {
    return null;
  }
}

export function saveDraft(key, value) {
  try {
    localStorage.setItem(PREFIX + key, JSON.stringify(value));
  } catch {
    // Storage full or disabled: the server copy is then the only one, nothing else to do.
  }
}

export function clearDraft(key) {
  localStorage.removeItem(PREFIX + key);
}

/** Keys of all drafts whose key starts with `prefix` (without the storage prefix). */
export function draftKeys(prefix) {
  const keys = [];
  for (let i = 0; i < localStorage.length; i += 1) {
    const key = localStorage.key(i);
    if (key?.startsWith(PREFIX + prefix)) keys.push(key.slice(PREFIX.length));
  }
  return keys;
}

// Clicks and keys on the candidate grid (a gr.HTML js_on_load: `element`, `trigger`, `watch`).
// Thumbs toggle on click; with a tile focused, U / + = thumbs up, D / - = thumbs down,
// 0 / X = withdraw (each moves on to the next tile), arrows move.
const tiles = () => Array.from(element.querySelectorAll('.sd-tile'));
const send = (tile, v) => {
  element.dataset.focus = tile.dataset.id;
  trigger('click', {candidate: parseInt(tile.dataset.id), rating: v});
};
element.addEventListener('click', (ev) => {
  const b = ev.target.closest('button.sd-up, button.sd-down');
  const t = ev.target.closest('.sd-tile');
  if (!t) return;
  if (!b) { t.focus(); return; }
  const want = b.classList.contains('sd-up') ? 1 : -1;
  send(t, parseInt(t.dataset.mine) === want ? 0 : want);
});
element.addEventListener('keydown', (ev) => {
  const t = ev.target.closest ? ev.target.closest('.sd-tile') : null;
  if (!t || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const all = tiles(), i = all.indexOf(t), k = ev.key;
  const cols = Math.max(1, all.filter(x => x.offsetTop === all[0].offsetTop).length);
  const go = (j) => { if (j >= 0 && j < all.length) { all[j].focus(); element.dataset.focus = all[j].dataset.id; } };
  let v = null;
  if (k === 'u' || k === 'U' || k === '+') v = 1;
  else if (k === 'd' || k === 'D' || k === '-') v = -1;
  else if (k === '0' || k === 'x' || k === 'X' || k === 'Delete' || k === 'Backspace') v = 0;
  if (v !== null) {
    ev.preventDefault();
    send(t, v);
    if (i + 1 < all.length) element.dataset.focus = all[i + 1].dataset.id;
    return;
  }
  const moves = {ArrowRight: 1, ArrowLeft: -1, ArrowDown: cols, ArrowUp: -cols};
  if (k in moves) { ev.preventDefault(); go(i + moves[k]); }
});
watch('value', () => {
  const id = element.dataset.focus;
  if (!id) return;
  const t = element.querySelector('.sd-tile[data-id="' + id + '"]');
  if (t) t.focus({preventScroll: true});
});

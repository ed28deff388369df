// Sort the listing by the clicked column; folders stay first, a second click reverses.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("listing");
  if (!table) return;
  const body = table.querySelector("tbody.entries");
  const headers = [...table.querySelectorAll("th[data-key]")];
  headers.forEach((th, column) => th.querySelector("button").addEventListener("click", () => {
    const ascending = th.getAttribute("aria-sort") !== "ascending";
    headers.forEach((other) => other.removeAttribute("aria-sort"));
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    const key = (row) => row.cells[column].dataset.sort;
    const numeric = th.dataset.key !== "name";
    const rows = [...body.rows].sort((a, b) => {
      const folders = (b.className === "dir") - (a.className === "dir");
      if (folders) return folders;
      const order = numeric ? Number(key(a)) - Number(key(b))
        : key(a).localeCompare(key(b), undefined, {numeric: true, sensitivity: "base"});
      return ascending ? order : -order;
    });
    body.append(...rows);
  }));
});

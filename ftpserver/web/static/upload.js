/* Uploads from the listing page: drop files or whole folders on #drop (or pick
 * them), and each goes to the folder the page lists by tus 1.0.0 at /.tus/, in
 * chunks, with a progress bar per file and one for all.  An upload's URL is kept
 * in localStorage (by target path, size and modification time), so dropping the
 * same file again, also after the page was reloaded or the link was cut,
 * resumes it where the server says it stopped.  Each chunk carries its sha256
 * (Upload-Checksum) where the browser can compute one: crypto.subtle exists only
 * on HTTPS and localhost.  No build step, no libraries. */
(function () {
  "use strict";

  var ENDPOINT = "/.tus/";
  var CHUNK = 8 * 1024 * 1024;
  var PARALLEL = 2;
  var RETRIES = 8;
  var STORE = "lan-ftp.tus:";

  var drop = document.getElementById("drop");
  if (!drop) return;
  var folder = drop.getAttribute("data-folder") || "/";
  if (folder.charAt(folder.length - 1) !== "/") folder += "/";
  var hashing = !!(window.isSecureContext && window.crypto && crypto.subtle);

  // -- the page -----------------------------------------------------------------

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text) node.textContent = text;
    return node;
  }

  var fileInput = element("input");
  fileInput.type = "file";
  fileInput.multiple = true;
  fileInput.hidden = true;
  var folderInput = element("input");
  folderInput.type = "file";
  folderInput.hidden = true;
  folderInput.setAttribute("webkitdirectory", "");
  var pickFiles = element("button", "upload-pick", "Choose files");
  pickFiles.type = "button";
  var pickFolder = element("button", "upload-pick", "Choose a folder");
  pickFolder.type = "button";
  var prompt = element("p", "upload-prompt", "Drop files or folders here to upload them to " + folder + " ");
  prompt.appendChild(pickFiles);
  prompt.appendChild(document.createTextNode(" "));
  if ("webkitdirectory" in folderInput) prompt.appendChild(pickFolder);
  var overall = element("progress", "upload-overall");
  overall.hidden = true;
  var summary = element("p", "upload-summary");
  summary.setAttribute("aria-live", "polite");
  var list = element("ul", "upload-list");
  var pending = element("div", "upload-pending");
  [prompt, fileInput, folderInput, overall, summary, list, pending].forEach(function (node) {
    drop.appendChild(node);
  });

  pickFiles.addEventListener("click", function () { fileInput.click(); });
  pickFolder.addEventListener("click", function () { folderInput.click(); });
  [fileInput, folderInput].forEach(function (input) {
    input.addEventListener("change", function () {
      var picked = [];
      for (var i = 0; i < input.files.length; i++) {
        var file = input.files[i];
        picked.push({ file: file, path: file.webkitRelativePath || file.name });
      }
      input.value = "";
      enqueue(picked);
    });
  });

  var depth = 0;
  document.addEventListener("dragenter", function (event) {
    if (!carriesFiles(event)) return;
    depth++;
    drop.classList.add("dragging");
  });
  document.addEventListener("dragleave", function () {
    if (depth > 0 && --depth === 0) drop.classList.remove("dragging");
  });
  document.addEventListener("dragover", function (event) {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  document.addEventListener("drop", function (event) {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    depth = 0;
    drop.classList.remove("dragging");
    dropped(event.dataTransfer).then(enqueue, function (error) {
      summary.textContent = "Could not read what was dropped: " + error.message;
    });
  });
  window.addEventListener("beforeunload", function (event) {
    if (running > 0) {
      event.preventDefault();
      event.returnValue = "";  // the uploads resume when the same files are dropped again
    }
  });

  function carriesFiles(event) {
    var types = event.dataTransfer && event.dataTransfer.types;
    return !!types && Array.prototype.indexOf.call(types, "Files") >= 0;
  }

  // -- what was dropped: files, and folders walked to their files -------------------

  function dropped(transfer) {
    var items = transfer.items;
    if (!items || !items.length || typeof items[0].webkitGetAsEntry !== "function") {
      return Promise.resolve(Array.prototype.map.call(transfer.files, function (file) {
        return { file: file, path: file.name };
      }));
    }
    // The entries must be taken now: the items are emptied once the event is over.
    var entries = [];
    for (var i = 0; i < items.length; i++) {
      var entry = items[i].kind === "file" && items[i].webkitGetAsEntry();
      if (entry) entries.push(entry);
    }
    var found = [];
    return Promise.all(entries.map(function (entry) { return walk(entry, found); }))
      .then(function () { return found; });
  }

  function walk(entry, found) {
    if (entry.isFile) {
      return new Promise(function (resolve, reject) {
        entry.file(function (file) {
          found.push({ file: file, path: entry.fullPath.replace(/^\/+/, "") });
          resolve();
        }, reject);
      });
    }
    var reader = entry.createReader();
    return new Promise(function (resolve, reject) {
      var children = [];
      (function more() {  // readEntries gives a folder's entries a batch at a time
        reader.readEntries(function (batch) {
          if (!batch.length) {
            Promise.all(children.map(function (child) { return walk(child, found); }))
              .then(function () { resolve(); }, reject);
            return;
          }
          children.push.apply(children, batch);
          more();
        }, reject);
      })();
    });
  }

  // -- the queue ------------------------------------------------------------------

  var queue = [];
  var running = 0;
  var totals = { bytes: 0, done: 0, files: 0, ok: 0, failed: 0 };

  function enqueue(picked) {
    picked.forEach(function (item) {
      var job = new Job(item.file, folder + item.path, item.path.indexOf("/") >= 0);
      queue.push(job);
      totals.bytes += item.file.size;
      totals.files++;
    });
    update();
    while (running < PARALLEL && queue.length) next();
  }

  function next() {
    var job = queue.shift();
    if (!job) return;
    running++;
    job.run().then(function () {
      totals.ok++;
    }, function (error) {
      totals.failed++;
      job.show("failed: " + error.message, true);
    }).then(function () {
      running--;
      update();
      if (queue.length) next();
      else if (!running && !totals.failed) setTimeout(reloadIfIdle, 800);
    });
  }

  /* Show the listing with the new files, unless more were dropped meanwhile. */
  function reloadIfIdle() {
    if (!running && !queue.length && !totals.failed) location.reload();
  }

  function update() {
    var done = totals.ok + totals.failed;
    overall.hidden = totals.files === 0;
    overall.max = Math.max(totals.bytes, 1);
    // Only empty files: the bar fills once they are all through.
    overall.value = totals.bytes ? Math.min(totals.done, overall.max)
      : (done === totals.files ? 1 : 0);
    summary.textContent = totals.files ? done + " of " + totals.files + " files, " +
      size(totals.done) + " of " + size(totals.bytes) +
      (totals.failed ? ", " + totals.failed + " failed" : "") : "";
  }

  function size(bytes) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB"];
    var unit = 0;
    while (bytes >= 1024 && unit < units.length - 1) { bytes /= 1024; unit++; }
    return (unit ? bytes.toFixed(1) : String(bytes)) + " " + units[unit];
  }

  // -- one file ---------------------------------------------------------------------

  function Job(file, target, mkdirs) {
    this.file = file;
    this.target = target;
    this.mkdirs = mkdirs;
    this.key = STORE + JSON.stringify([target, file.size, file.lastModified]);
    this.done = 0;
    this.row = element("li", "upload-file");
    this.label = element("span", "upload-name", target);
    this.bar = element("progress");
    this.bar.max = Math.max(file.size, 1);
    this.bar.value = 0;
    this.status = element("span", "upload-status", "waiting");
    this.row.appendChild(this.label);
    this.row.appendChild(this.bar);
    this.row.appendChild(this.status);
    list.appendChild(this.row);
  }

  Job.prototype.show = function (text, failed) {
    this.status.textContent = text;
    if (failed) this.row.classList.add("upload-failed");
  };

  Job.prototype.progress = function (held) {
    totals.done += held - this.done;
    this.done = held;
    this.bar.value = held;
    this.show(Math.floor(100 * held / Math.max(this.file.size, 1)) + " %");
    update();
  };

  Job.prototype.run = async function () {
    var url = localStorage.getItem(this.key);
    var offset = url ? await this.offsetAt(url) : null;
    if (offset === null) {
      url = await this.create();
      offset = 0;
    } else {
      this.show("resuming");
    }
    this.progress(offset);
    var failures = 0;
    while (offset < this.file.size) {
      var end = Math.min(offset + CHUNK, this.file.size);
      var response;
      try {
        response = await this.send(url, offset, this.file.slice(offset, end));
      } catch (error) {  // the link was cut: wait, ask the server what it holds, go on
        if (++failures > RETRIES) throw new Error("the connection keeps failing");
        this.show("connection lost, retrying");
        await pause(failures);
        var held = await this.offsetAt(url);
        if (held === null) throw new Error("the server no longer knows this upload");
        offset = held;
        this.progress(offset);
        continue;
      }
      if (response.status === 204) {
        offset = Number(response.getResponseHeader("Upload-Offset"));
        failures = 0;
        this.progress(offset);
      } else if (response.status === 409 || response.status === 460) {
        // Busy, or another offset, or the chunk arrived damaged: try again from what is held.
        if (++failures > RETRIES) throw new Error(reason(response.status, response.responseText));
        this.show(response.status === 460 ? "chunk damaged, sending it again" : "busy, waiting");
        await pause(failures);
        var now = await this.offsetAt(url);
        if (now === null) throw new Error("the server no longer knows this upload");
        offset = now;
        this.progress(offset);
      } else {
        if (response.status === 404 || response.status === 410) localStorage.removeItem(this.key);
        throw new Error(reason(response.status, response.responseText));
      }
    }
    localStorage.removeItem(this.key);
    this.bar.value = this.bar.max;  // full for an empty file too (its bar's max is 1)
    this.show("done");
  };

  /* The bytes the server holds of the upload at ``url``, or null if it is gone. */
  Job.prototype.offsetAt = async function (url) {
    var response = await fetch(url, { method: "HEAD", cache: "no-store",
                                      headers: { "Tus-Resumable": "1.0.0" } });
    if (response.ok && Number(response.headers.get("Upload-Length")) === this.file.size) {
      return Number(response.headers.get("Upload-Offset"));
    }
    if (response.status === 401) throw new Error("log in again to go on");
    localStorage.removeItem(this.key);
    return null;
  };

  Job.prototype.create = async function () {
    var metadata = "filename " + base64(new TextEncoder().encode(this.target));
    if (this.mkdirs) metadata += ",mkdirs";
    var response = await fetch(ENDPOINT, { method: "POST", headers: {
      "Tus-Resumable": "1.0.0", "Upload-Length": String(this.file.size),
      "Upload-Metadata": metadata } });
    if (response.status !== 201) throw new Error(reason(response.status, await response.text()));
    var url = new URL(response.headers.get("Location"), location.href).href;
    if (this.file.size) localStorage.setItem(this.key, url);
    return url;
  };

  Job.prototype.send = async function (url, offset, blob) {
    var headers = { "Tus-Resumable": "1.0.0", "Upload-Offset": String(offset),
                    "Content-Type": "application/offset+octet-stream" };
    if (hashing) {
      var digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
      headers["Upload-Checksum"] = "sha256 " + base64(new Uint8Array(digest));
    }
    var job = this;
    return new Promise(function (resolve, reject) {
      var request = new XMLHttpRequest();
      request.open("PATCH", url);
      Object.keys(headers).forEach(function (name) { request.setRequestHeader(name, headers[name]); });
      request.upload.onprogress = function (event) { job.progress(offset + event.loaded); };
      request.onload = function () { resolve(request); };
      request.onerror = request.ontimeout = request.onabort = function () {
        reject(new Error("connection lost"));
      };
      request.send(blob);
    });
  };

  function pause(failures) {
    var seconds = Math.min(Math.pow(2, failures - 1), 30);
    return new Promise(function (resolve) { setTimeout(resolve, seconds * 1000); });
  }

  function reason(status, text) {
    var line = String(text || "").split("\n")[0];
    try { line = JSON.parse(text).message || line; } catch (error) { /* plain text */ }
    if (status === 401) return "log in again to go on";
    if (status === 413) return "over quota: " + line;
    return line ? line : "the server answered " + status;
  }

  function base64(bytes) {
    var text = "";
    for (var i = 0; i < bytes.length; i++) text += String.fromCharCode(bytes[i]);
    return btoa(text);
  }

  // -- uploads a reload interrupted ---------------------------------------------------

  (function unfinished() {
    var names = [];
    for (var i = 0; i < localStorage.length; i++) {
      var key = localStorage.key(i);
      if (key.indexOf(STORE) !== 0) continue;
      try {
        var target = JSON.parse(key.slice(STORE.length))[0];
        if (target.indexOf(folder) === 0) names.push(target.slice(folder.length));
      } catch (error) { /* not ours */ }
    }
    if (!names.length) return;
    pending.appendChild(element("p", "", "Unfinished uploads here: drop or choose the same " +
                                "files again to resume them."));
    var items = element("ul");
    names.sort().forEach(function (name) { items.appendChild(element("li", "", name)); });
    pending.appendChild(items);
    var forget = element("button", "upload-forget", "Forget them");
    forget.type = "button";
    forget.addEventListener("click", function () {
      var ends = [];
      for (var j = localStorage.length - 1; j >= 0; j--) {
        var key = localStorage.key(j);
        if (key.indexOf(STORE) !== 0) continue;
        try {
          if (JSON.parse(key.slice(STORE.length))[0].indexOf(folder) !== 0) continue;
        } catch (error) { continue; }
        ends.push(fetch(localStorage.getItem(key), { method: "DELETE",
                                                     headers: { "Tus-Resumable": "1.0.0" } })
          .catch(function () { /* gone already, or expires by itself */ }));
        localStorage.removeItem(key);
      }
      Promise.all(ends).then(function () { pending.textContent = ""; });
    });
    pending.appendChild(forget);
  })();
})();

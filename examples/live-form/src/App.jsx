import { useCallback, useEffect, useRef, useState } from "react";

// Set VITE_BROKER_URL when Vite runs (dev or build) to use another server.
const BROKER_URL = import.meta.env.VITE_BROKER_URL ?? "http://localhost:8080";

/** Wait after the last keystroke before the name is sent, in milliseconds. */
const DEBOUNCE_MS = 150;
/** How far ahead the countdown button schedules its event, in seconds. */
const COUNTDOWN_SECONDS = 5;

/**
 * Inserts a version of `event`. A `timestamp` in epoch seconds schedules it:
 * Broker stores it now and publishes it to every stream when that second
 * comes. Returns the stored record.
 */
async function insert(event, data, timestamp) {
  const response = await fetch(`${BROKER_URL}/insert`, {
    method: "POST",
    // text/plain is a CORS "simple" content type, so the browser sends the
    // request without a preflight. Broker parses the body as JSON all the same.
    headers: { "Content-Type": "text/plain" },
    body: JSON.stringify({ event, data, timestamp }),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(`insert of ${event} failed with ${response.status}: ${body.message}`);
  return body;
}

function formatTime(ms) {
  const time = new Date(ms).toLocaleTimeString("en-GB", { hour12: false });
  return `${time}.${String(ms % 1000).padStart(3, "0")}`;
}

export default function App() {
  const [status, setStatus] = useState("connecting");
  const [draft, setDraft] = useState("");
  const [sharedName, setSharedName] = useState(null);
  const [countdown, setCountdown] = useState(null);
  const [history, setHistory] = useState(null);
  const [error, setError] = useState(null);
  const input = useRef(null);
  const debounce = useRef(null);

  useEffect(() => {
    // The filter keeps other names off this stream. Broker first sends the
    // current version of each name (the snapshot), then every new one, so a
    // reloaded window starts from what everyone else sees.
    const source = new EventSource(`${BROKER_URL}/events?event=name&event=countdown`);
    source.onopen = () => setStatus("open");
    // EventSource reconnects by itself after an error, resuming from the last
    // id it received.
    source.onerror = () => setStatus("reconnecting");

    // Broker names every message after its event, and EventSource hands a
    // named message only to listeners for that name, never to onmessage.
    source.addEventListener("name", (message) => {
      const name = JSON.parse(message.data);
      setSharedName(name);
      // Leave the field alone while this window types in it: the echo of an
      // earlier keystroke would otherwise overwrite the letters typed since.
      if (document.activeElement !== input.current) setDraft(name);
    });
    source.addEventListener("countdown", (message) => {
      const { due } = JSON.parse(message.data);
      setCountdown({ due: due * 1000, arrived: Date.now() });
    });
    return () => source.close();
  }, []);

  function onNameChange(change) {
    const name = change.target.value;
    setDraft(name);
    clearTimeout(debounce.current);
    debounce.current = setTimeout(() => {
      insert("name", name).catch((failure) => setError(failure.message));
    }, DEBOUNCE_MS);
  }

  async function startCountdown() {
    // Timestamps are whole seconds, so the event is due 4 to 5 seconds from now.
    const due = Math.floor(Date.now() / 1000) + COUNTDOWN_SECONDS;
    try {
      await insert("countdown", { due }, due);
    } catch (failure) {
      setError(failure.message);
    }
  }

  const loadHistory = useCallback(async () => {
    try {
      const response = await fetch(`${BROKER_URL}/collection/name`);
      if (!response.ok) throw new Error(`history request failed with ${response.status}`);
      setHistory(await response.json());
    } catch (failure) {
      setError(failure.message);
    }
  }, []);

  useEffect(() => {
    loadHistory();
  }, [loadHistory]);

  return (
    <main>
      <h1>Broker live form</h1>
      <p>
        Open this page in two windows. <span id="status" className={`status ${status}`}>{status}</span>
      </p>
      {error && <p id="error" className="status error">{error}</p>}

      <section>
        <h2>Name</h2>
        <label>
          Type here, and every open window shows it:{" "}
          <input id="name" ref={input} value={draft} onChange={onNameChange} />
        </label>
        <p>
          Everyone sees: <strong id="shared-name">{sharedName ?? "(nothing yet)"}</strong>
        </p>
      </section>

      <section>
        <h2>Countdown</h2>
        <button id="countdown-start" onClick={startCountdown}>
          Fire in about {COUNTDOWN_SECONDS} seconds
        </button>
        {countdown && (
          // The data attributes carry the times in epoch milliseconds for tests.
          <p id="countdown" data-due={countdown.due} data-arrived={countdown.arrived}>
            Due at {formatTime(countdown.due)}, arrived here at {formatTime(countdown.arrived)}{" "}
            <span className="late">({countdown.arrived - countdown.due} ms after its second)</span>
          </p>
        )}
      </section>

      <section>
        <h2>History of the name</h2>
        <button id="history-load" onClick={loadHistory}>
          Reload history
        </button>
        <ol id="history">
          {history?.map((version) => (
            <li key={version.id}>
              {JSON.stringify(version.data)}{" "}
              <span className="late">at {new Date(version.timestamp * 1000).toLocaleTimeString("en-GB")}</span>
            </li>
          ))}
        </ol>
      </section>
    </main>
  );
}

"""The word lists synthetic agents' tools are built from: domains, their parameters, and ways to say things.

Every domain has a ``topic`` word that each of its descriptions and requests carries: the word that tells
which offered tool a request asks for (a model reads the whole request; the test model counts shared words,
``neurons/miner/backends/tool_calls.py``). Parameter names are snake_case here; a camelCase tool writes them
so. Within a domain no parameter name's words contain another's, so each value is stated unambiguously.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Pool = tuple[Any, ...] | Callable[[random.Random], str]


@dataclass(frozen=True)
class Param:
    """One parameter a domain's tools may take. ``names``: its name's choices; ``kind``: string, integer,
    number, boolean, enum, array (of ``item``: string or enum) or object (of ``fields``); ``pool``: its
    values (strings, enum values, or (low, high) for numbers); ``docs``: descriptions to choose from."""

    names: tuple[str, ...]
    kind: str
    pool: Pool = ()
    docs: tuple[str, ...] = ()
    required: bool = True
    item: str = "string"
    fields: tuple[Param, ...] = ()


@dataclass(frozen=True)
class Domain:
    topic: str
    verbs: tuple[str, ...]
    nouns: tuple[str, ...]
    docs: tuple[str, ...]  # the function's description, each with the topic word
    asks: tuple[str, ...]  # what the user wants done, imperative, each with the topic word
    params: tuple[Param, ...]


def date(rng: random.Random) -> str:
    return f"{rng.randint(2025, 2027)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def clock(rng: random.Random) -> str:
    return f"{rng.randint(6, 22):02d}:{rng.choice((0, 15, 30, 45)):02d}"


def email(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES).lower()}.{rng.choice(LAST_NAMES).lower()}@{rng.choice(MAIL_HOSTS)}"


def tracking(rng: random.Random) -> str:
    return f"{rng.choice(('1Z', 'JD', 'RR', 'TBA'))}{rng.randrange(10**9, 10**10)}"


def P(names: str, kind: str, pool: Pool = (), docs: tuple[str, ...] = (), *, required: bool = True,
      item: str = "string", fields: tuple[Param, ...] = ()) -> Param:
    """A ``Param`` with its names given as one space-separated string."""
    return Param(tuple(names.split()), kind, pool, docs, required, item, fields)


FIRST_NAMES = ("Ana", "Bruno", "Chen", "Dara", "Elif", "Femi", "Greta", "Hiro", "Ines", "Jonas", "Kwame", "Lena",
               "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Viktor", "Wen", "Yara")
LAST_NAMES = ("Silva", "Novak", "Okafor", "Larsen", "Kim", "Haddad", "Moreau", "Tanaka", "Rossi", "Weber", "Costa",
              "Ivanova", "Nguyen", "Berg", "Diaz", "Shah")
MAIL_HOSTS = ("example.com", "example.org", "mail.test", "corp.example", "acme.test")
CITIES = ("Lisbon", "Oslo", "Nairobi", "Osaka", "Lima", "Krakow", "Montreal", "Auckland", "Porto", "Seville", "Hanoi",
          "Accra", "Tbilisi", "Quito", "Bergen", "Adelaide", "Valencia", "Dakar", "Busan", "Cordoba", "New York",
          "São Paulo", "Cape Town", "Kuala Lumpur", "Buenos Aires", "Salt Lake City", "Reykjavik", "Zagreb")
AIRPORTS = ("LIS", "OSL", "NBO", "KIX", "LIM", "KRK", "YUL", "AKL", "OPO", "SVQ", "HAN", "ACC", "JFK", "GRU", "CPT",
            "KUL", "EZE", "KEF", "ZAG", "MAD", "CDG", "AMS", "SIN", "YVR")
ADDRESSES = ("12 Harbour Road", "Central Station", "4 Elm Street", "the airport", "City Hall", "88 Market Square",
             "Riverside Park", "21 Hill Lane", "the university library", "Pier 7", "Old Town Gate", "9 Mill Road")
LANGUAGES = ("French", "German", "Spanish", "Portuguese", "Italian", "Japanese", "Korean", "Swahili", "Polish",
             "Turkish", "Dutch", "Greek")
CURRENCIES = ("USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "BRL", "INR", "ZAR", "NOK", "SEK")
TICKERS = ("ACME", "GLOBX", "INIT", "UMBR", "STARK", "WAYNE", "TYRL", "CYBD", "HOOLI", "PIED", "VAND", "MASSV")
PHRASES = ("Where is the train station?", "Thank you for your help", "The meeting starts at noon",
           "Please close the window", "I would like a coffee", "How much does this cost?", "See you tomorrow",
           "The package arrived this morning", "Happy birthday", "Is this seat free?")
SUBJECTS = ("Quarterly report", "Lunch on Friday", "Project kickoff", "Invoice question", "Holiday plans",
            "Team offsite", "Contract renewal", "Welcome aboard", "Server maintenance", "Book club")
BODIES = ("Can we move our call to next week?", "The draft is attached for review.", "Thanks for the quick reply.",
          "Please confirm the new date.", "Let me know if anything is missing.", "Looking forward to it.")
EVENTS = ("Design review", "Dentist appointment", "Weekly sync", "Yoga class", "Parent evening", "Budget planning",
          "Coffee with Lena", "Release retro", "Piano lesson", "Quarterly planning")
NOTES = ("call the bank", "water the plants", "renew the passport", "send the slides", "pick up the dry cleaning",
         "book the car service", "pay the electricity bill", "buy a birthday gift", "back up the laptop")
SONGS = ("Blue Monday", "Clair de Lune", "Harvest Moon", "Midnight City", "Paper Planes", "Ocean Eyes", "Teardrop",
         "Golden Hour", "Riptide", "Dreams")
ARTISTS = ("Nina Simone", "Daft Punk", "Fela Kuti", "Björk", "Radiohead", "Ella Fitzgerald", "Ryuichi Sakamoto")
RESTAURANTS = ("The Olive Tree", "Sakura House", "Casa Lupe", "Blue Door Bistro", "Green Fork", "Spice Route",
               "Harbour Grill", "Noodle Bar 88", "Le Petit Four")
MOVIES = ("The Long Road", "Northern Lights", "Paper Moon", "Silent River", "Echo Park", "Glass Garden",
          "The Last Orchard", "Small Hours")
TEAMS = ("Lisbon Lions", "Oslo Owls", "Nairobi Stars", "Osaka Waves", "Lima United", "Krakow Rovers",
         "Montreal Comets", "Porto Mariners")
INGREDIENTS = ("chickpeas", "spinach", "salmon", "mushrooms", "lentils", "tofu", "tomatoes", "rice", "eggs",
               "potatoes", "lemon", "garlic", "chicken", "feta")
WORDS = ("serendipity", "ephemeral", "resilience", "quixotic", "ubiquitous", "meticulous", "candour", "lucid",
         "paradigm", "ambiguous")
NEWS = ("renewable energy", "space exploration", "local elections", "football transfers", "interest rates",
        "public transport", "climate policy", "artificial intelligence")
FILES = ("budget_2026.xlsx", "team-photo.png", "contract_final.pdf", "notes.txt", "slides-v3.pptx",
         "invoice_0412.pdf", "roadmap.md", "backup.zip")
TICKET_TITLES = ("Login page times out", "Export button does nothing", "Wrong currency on invoices",
                 "Search ignores filters", "App crashes on start", "Password reset email never arrives")


def _city(docs: tuple[str, ...] = ("the city", "city name", "name of the city")) -> Param:
    return P("city location town", "string", CITIES, docs)


DOMAINS: tuple[Domain, ...] = (
    Domain("weather", ("get", "fetch", "lookup", "check"), ("weather", "weather_forecast", "current_weather"),
           ("Get the weather forecast for a city", "Returns current weather conditions and a forecast",
            "Look up the weather in a given place"),
           ("check the weather", "get me the weather forecast", "look up the weather", "find out the weather"),
           (_city(), P("days forecast_days", "integer", (1, 10), ("how many days to forecast",), required=False),
            P("units temperature_unit", "enum", ("celsius", "fahrenheit", "kelvin"), ("unit for temperatures",),
              required=False),
            P("include_alerts severe_alerts", "boolean", (), ("whether to add weather warnings",), required=False))),
    Domain("calendar", ("create", "add", "schedule", "insert"), ("calendar_event", "event", "meeting"),
           ("Add an event to the user's calendar", "Create a calendar entry", "Schedules a meeting in the calendar"),
           ("put an event in my calendar", "add this to the calendar", "schedule a calendar event"),
           (P("title summary", "string", EVENTS, ("what the event is called", "short title")),
            P("date day", "string", date, ("the day, YYYY-MM-DD", "event date (ISO 8601)")),
            P("start_time starts_at", "string", clock, ("start time, HH:MM", "24-hour start time")),
            P("duration_minutes length_minutes", "integer", (15, 180), ("how long it lasts",), required=False),
            P("attendees guests invitees", "array", email, ("email addresses to invite",), required=False),
            P("send_reminder notify", "boolean", (), ("remind the attendees beforehand",), required=False))),
    Domain("flight", ("search", "find", "book", "list"), ("flights", "flight_offers", "flight"),
           ("Search flight offers between two airports", "Find a flight for given dates",
            "Books a flight for the traveller"),
           ("find me a flight", "search for a flight", "book a flight", "look for a flight"),
           (P("origin from_airport departure_airport", "string", AIRPORTS, ("IATA code of the origin",)),
            P("destination to_airport arrival_airport", "string", AIRPORTS, ("IATA code of the destination",)),
            P("departure_date outbound_date", "string", date, ("date of departure",)),
            P("passengers travellers", "integer", (1, 6), ("number of travellers",), required=False),
            P("cabin cabin_class", "enum", ("economy", "premium", "business", "first"), (), required=False),
            P("nonstop direct_only", "boolean", (), ("only direct flights",), required=False))),
    Domain("stock", ("get", "fetch", "lookup", "quote"), ("stock_quote", "stock_price", "stock"),
           ("Get the latest stock quote for a ticker", "Returns a stock's current price", "Real-time stock prices"),
           ("get the stock price", "look up a stock quote", "fetch the latest stock price"),
           (P("symbol ticker", "string", TICKERS, ("ticker symbol", "the stock's symbol")),
            P("exchange market", "enum", ("NASDAQ", "NYSE", "LSE", "TSE", "XETRA"), (), required=False),
            P("currency quote_currency", "enum", CURRENCIES, ("currency of the price",), required=False))),
    Domain("convert", ("convert", "transform"), ("units", "measurement", "unit_value"),
           ("Convert a measurement from one unit to another", "Unit converter: convert a value between units"),
           ("convert a measurement", "convert this value", "convert between units"),
           (P("value amount quantity", "number", (0.5, 500.0), ("the number to convert",)),
            P("from_unit source_unit", "enum", ("km", "mi", "kg", "lb", "m", "ft", "l", "gal"), ()),
            P("to_unit target_unit", "enum", ("mi", "km", "lb", "kg", "ft", "m", "gal", "l"), ()),
            P("decimals precision", "integer", (0, 6), ("digits after the point",), required=False))),
    Domain("database", ("query", "lookup", "find", "fetch"), ("records", "database_rows", "rows"),
           ("Query a table in the company database", "Look up records in the database by id"),
           ("look up a record in the database", "query the database", "fetch a database record"),
           (P("table collection", "enum", ("customers", "orders", "products", "invoices", "employees"), ()),
            P("record_id row_id", "integer", (1, 99999), ("primary key of the record",)),
            P("columns fields", "array", ("name", "email", "status", "total", "created_at"), ("columns to return",),
              required=False, item="enum"),
            P("include_deleted with_archived", "boolean", (), (), required=False))),
    Domain("email", ("send", "compose", "draft", "write"), ("email", "mail", "message"),
           ("Send an email on the user's behalf", "Compose and send an email", "Drafts an email to a recipient"),
           ("send an email", "write an email", "email someone for me", "draft an email"),
           (P("recipient to_address", "string", email, ("who receives it",)),
            P("subject", "string", SUBJECTS, ("the subject line",)),
            P("body text", "string", BODIES, ("the message itself",)),
            P("cc copy_to", "array", email, ("addresses in copy",), required=False),
            P("priority importance", "enum", ("low", "normal", "high"), (), required=False))),
    Domain("translate", ("translate",), ("text", "phrase", "sentence"),
           ("Translate text into another language", "Machine translation: translate a phrase"),
           ("translate a phrase", "translate this sentence", "translate some text"),
           (P("text phrase source_text", "string", PHRASES, ("what to translate",)),
            P("target_language target_lang", "enum", LANGUAGES, ("language to translate into",)),
            P("formal formal_register", "boolean", (), ("use the polite form",), required=False))),
    Domain("directions", ("get", "plan", "find", "compute"), ("directions", "route", "travel_route"),
           ("Get directions between two places", "Plan a route with turn-by-turn directions"),
           ("get directions", "find directions", "work out directions"),
           (P("start origin_address", "string", ADDRESSES, ("where the trip begins",)),
            P("destination end_address", "string", ADDRESSES, ("where it ends",)),
            P("mode travel_mode", "enum", ("driving", "walking", "cycling", "transit"), (), required=False),
            P("avoid_tolls no_tolls", "boolean", (), (), required=False))),
    Domain("hotel", ("search", "book", "find", "reserve"), ("hotel", "hotel_room", "hotels"),
           ("Search hotel rooms in a city", "Book a hotel room for some nights", "Find hotel availability"),
           ("book a hotel", "find a hotel room", "search for a hotel"),
           (_city(("city to stay in",)), P("check_in arrival_date", "string", date, ("first night, YYYY-MM-DD",)),
            P("nights stay_length", "integer", (1, 14), ("number of nights",)),
            P("guests adults", "integer", (1, 6), (), required=False),
            P("max_price budget", "number", (40.0, 600.0), ("per night",), required=False),
            P("breakfast with_breakfast", "boolean", (), (), required=False))),
    Domain("restaurant", ("book", "reserve"), ("table", "restaurant_table", "restaurant"),
           ("Reserve a table at a restaurant", "Book a restaurant table for a party"),
           ("book a restaurant table", "reserve a table at a restaurant", "get us a restaurant reservation"),
           (P("restaurant venue", "string", RESTAURANTS, ("name of the restaurant",)),
            P("date day", "string", date, ()), P("time slot", "string", clock, ("HH:MM",)),
            P("party_size covers", "integer", (1, 12), ("people at the table",)),
            P("place area", "object", (), ("where the restaurant is",), fields=(
                _city(), P("country_code country", "enum", ("PT", "NO", "JP", "PE", "PL", "CA", "NZ", "ES"), ()))))),
    Domain("currency", ("convert", "get", "quote"), ("currency", "exchange_rate", "fx_rate"),
           ("Convert an amount from one currency to another", "Get the currency exchange rate"),
           ("convert some currency", "check a currency exchange rate", "convert money to another currency"),
           (P("amount sum", "number", (1.0, 10000.0), ()), P("base_currency from_currency", "enum", CURRENCIES, ()),
            P("quote_currency to_currency", "enum", CURRENCIES, ()))),
    Domain("reminder", ("create", "set", "add", "schedule"), ("reminder", "alarm_reminder", "reminder_note"),
           ("Create a reminder some minutes from now", "Sets a reminder with a note"),
           ("set a reminder", "create a reminder", "add a reminder"),
           (P("note message_text", "string", NOTES, ("what to be reminded of",)),
            P("minutes_from_now delay_minutes", "integer", (5, 600), ("when, in minutes",)),
            P("repeat recurrence", "enum", ("never", "daily", "weekly", "monthly"), (), required=False))),
    Domain("search", ("search", "query", "find"), ("web", "pages", "web_pages"),
           ("Search the web for pages about a query", "Web search: returns matching pages"),
           ("search the web", "run a web search", "search online"),
           (P("query search_terms", "string", (), ("what to search for",)),
            P("max_results result_count", "integer", (1, 20), (), required=False),
            P("safe_search safe", "boolean", (), (), required=False))),
    Domain("news", ("get", "fetch", "list"), ("news", "headlines", "news_articles"),
           ("Get the latest news headlines on a topic", "Fetch recent news articles"),
           ("get the latest news", "fetch news headlines", "show me the news"),
           (P("topic subject_matter", "string", NEWS, ("what the news is about",)),
            P("country region_code", "enum", ("US", "GB", "DE", "JP", "BR", "IN", "KE"), (), required=False),
            P("limit max_items", "integer", (1, 30), (), required=False))),
    Domain("music", ("play", "queue", "start"), ("music", "song", "track"),
           ("Play music on the user's speaker", "Queue a song to play music"),
           ("play some music", "put on music", "queue up music"),
           (P("song track_name", "string", SONGS, ("title of the song",)),
            P("artist performer", "string", ARTISTS, (), required=False),
            P("volume loudness", "integer", (0, 100), ("0 to 100",), required=False),
            P("shuffle random_order", "boolean", (), (), required=False))),
    Domain("lights", ("set", "adjust", "control"), ("lights", "lighting", "room_lights"),
           ("Turn the smart home lights on, off or dim them", "Control the lights in a room"),
           ("adjust the lights", "change the lights", "set the lights"),
           (P("room zone", "enum", ("kitchen", "bedroom", "office", "hallway", "lounge"), ()),
            P("brightness level", "integer", (0, 100), ("percent",)),
            P("color colour", "enum", ("warm", "cool", "red", "blue", "green"), (), required=False))),
    Domain("thermostat", ("set", "adjust", "change"), ("thermostat", "temperature_setpoint", "heating"),
           ("Set the thermostat's target temperature", "Adjust the thermostat"),
           ("set the thermostat", "change the thermostat", "adjust the thermostat"),
           (P("target_celsius setpoint", "number", (16.0, 28.0), ("degrees Celsius",)),
            P("mode hvac_mode", "enum", ("heat", "cool", "auto", "eco"), (), required=False))),
    Domain("package", ("track", "get", "check"), ("package", "shipment", "parcel_status"),
           ("Track a package by its tracking number", "Get a package's delivery status"),
           ("track my package", "check where my package is", "find out my package's status"),
           (P("tracking_number tracking_code", "string", tracking, ()),
            P("carrier courier", "enum", ("UPS", "FedEx", "DHL", "USPS", "PostNL"), (), required=False))),
    Domain("invoice", ("create", "issue", "send"), ("invoice", "bill", "invoice_draft"),
           ("Create an invoice for a customer", "Issue an invoice with line items"),
           ("create an invoice", "issue an invoice", "bill a customer with an invoice"),
           (P("customer_email billing_email", "string", email, ()), P("total amount_due", "number", (10.0, 9000.0), ()),
            P("currency", "enum", CURRENCIES, ()), P("due_date pay_by", "string", date, (), required=False),
            P("line_items items", "array", SUBJECTS, ("what is billed",), required=False))),
    Domain("timezone", ("get", "lookup", "find"), ("timezone", "local_time", "time_zone"),
           ("Look up the local time and timezone of a city", "Returns a city's timezone and current time"),
           ("find the local time and timezone", "look up the timezone", "check the timezone"),
           (_city(), P("use_24_hour military_time", "boolean", (), (), required=False))),
    Domain("recipe", ("find", "search", "suggest"), ("recipes", "recipe", "dishes"),
           ("Find a recipe that uses given ingredients", "Suggest a recipe"),
           ("find a recipe", "suggest a recipe", "look up a recipe"),
           (P("ingredients pantry", "array", INGREDIENTS, ("what is in the kitchen",)),
            P("cuisine style", "enum", ("italian", "indian", "mexican", "japanese", "greek"), (), required=False),
            P("max_minutes cooking_time", "integer", (10, 120), (), required=False),
            P("vegetarian meatless", "boolean", (), (), required=False))),
    Domain("movie", ("find", "get", "list"), ("showtimes", "movie_times", "cinema_listings"),
           ("Find showtimes for a movie in a city", "List cinemas showing a movie"),
           ("find movie showtimes", "check when a movie is on", "look up a movie"),
           (P("title film", "string", MOVIES, ()), _city(), P("date day", "string", date, (), required=False))),
    Domain("ride", ("request", "book", "order"), ("ride", "taxi_ride", "car"),
           ("Request a ride from a pickup point", "Book a ride to a destination"),
           ("book me a ride", "order a ride", "get me a ride"),
           (P("pickup pickup_address", "string", ADDRESSES, ()), P("dropoff dropoff_address", "string", ADDRESSES, ()),
            P("ride_type vehicle", "enum", ("standard", "xl", "premium", "green"), (), required=False),
            P("seats passengers", "integer", (1, 6), (), required=False))),
    Domain("file", ("find", "search", "locate"), ("file", "files", "documents"),
           ("Find a file in the user's cloud storage", "Search for a file by name"),
           ("find a file", "locate a file", "search for a file"),
           (P("filename file_name", "string", FILES, ()),
            P("folder directory", "string", ("/reports", "/photos", "/shared", "/archive"), (), required=False))),
    Domain("ticket", ("create", "open", "file"), ("ticket", "issue", "support_ticket"),
           ("Open a support ticket for a bug", "Create a ticket in the issue tracker"),
           ("open a support ticket", "create a ticket", "file a ticket"),
           (P("title headline", "string", TICKET_TITLES, ()),
            P("severity priority_level", "enum", ("low", "medium", "high", "critical"), ()),
            P("labels tags", "array", ("bug", "ui", "billing", "backend", "mobile"), (), required=False, item="enum"))),
    Domain("score", ("get", "fetch", "lookup"), ("match_score", "score", "game_result"),
           ("Get the latest match score for a team", "Fetch a game's final score"),
           ("get the latest match score", "check the score", "look up the final score"),
           (P("team club", "string", TEAMS, ()), P("date day", "string", date, (), required=False))),
    Domain("definition", ("define", "lookup", "get"), ("word", "definition", "dictionary_entry"),
           ("Look up a word's definition in the dictionary", "Returns the definition of a word"),
           ("look up the definition", "find the definition", "give me the dictionary definition"),
           (P("word term", "string", WORDS, ()),
            P("examples with_examples", "boolean", (), ("add example sentences",), required=False))),
)

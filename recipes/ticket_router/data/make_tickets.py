"""Write tickets.csv: synthetic customer-support tickets for the dtrain ticket-router recipe.

Written for the dtrain project and dedicated to the public domain (CC0-1.0). No real customer data
and no personal data: every ticket is composed from the hand-written parts below (names in sign-offs
are invented first names; order numbers, amounts and codes are random).

Deterministic: standard library only, one fixed seed; `python make_tickets.py` rewrites tickets.csv
next to this file byte for byte.

A ticket of class C is either a terse one-liner of C, or
    [prefix] [greeting] [context] CORE(C) [detail(C)] [second CORE(C)] [ask(C)] [urgency] [closing] [name]
with slots ({order}, {amount}, {device}, {error}, ...) filled at random. Then noise: typos (swapped,
dropped, doubled or neighbouring-key letters) in about 15 % of tickets, informal spelling, all-lowercase
tickets, an ALL-CAPS sentence, missing or doubled punctuation. About 7 % of tickets are ambiguous: they
mention a second team's topic (a side note, or a hand-written two-topic ticket) and are labelled by
their primary intent. Near-duplicates (same words ignoring case and punctuation) are dropped.
"""

from __future__ import annotations

import csv
import random
import re
from pathlib import Path

SEED = 1123
OUT = Path(__file__).with_name("tickets.csv")

# Tickets per label: roughly balanced, not perfectly.
TARGETS = {"technical": 258, "billing": 244, "shipping": 231, "account": 226, "feature_request": 187}

P_TERSE, P_SHORT, P_LONG = 0.12, 0.23, 0.20  # the rest: medium
P_MIXED, P_SIDE = 0.035, 0.035  # ambiguous: two-topic template / side note about another team's topic
P_TYPO, P_INFORMAL, P_LOWER, P_CAPS_SENTENCE, P_ALL_CAPS = 0.13, 0.12, 0.08, 0.03, 0.015
P_NO_PUNCT, P_EXCLAIM, P_PREFIX = 0.10, 0.05, 0.04

# --------------------------------------------------------------------------------------------- slots

PRODUCTS = ["smart hub", "doorbell camera", "indoor camera", "outdoor camera", "smart plug", "motion sensor",
            "thermostat", "air purifier", "robot vacuum", "wireless charger", "mesh Wi-Fi extender",
            "desk lamp", "smart speaker", "door sensor", "starter kit", "water leak sensor", "video baby monitor",
            "smart lock", "light strip", "replacement filter pack"]
PLANS = ["Plus plan", "Pro plan", "Family plan", "Business plan", "annual subscription", "monthly plan",
         "cloud storage add-on", "Premium plan", "Team plan", "Basic plan"]
ADDONS = ["extra storage", "video history", "priority support", "SMS alerts", "extended warranty", "API access"]
DEVICES = {  # device: the operating systems it may run
    "iPhone 13": ["iOS 17", "iOS 16.6"], "iPhone 15": ["iOS 17", "iOS 17.2"], "iPhone SE": ["iOS 16.6", "iOS 17"],
    "Pixel 7": ["Android 14", "Android 13"], "Pixel 8": ["Android 14"], "Galaxy S23": ["Android 14", "One UI 6"],
    "Galaxy A54": ["Android 13", "Android 14"], "iPad": ["iPadOS 17"], "iPad mini": ["iPadOS 16", "iPadOS 17"],
    "MacBook Air": ["macOS Sonoma", "macOS Ventura"], "MacBook Pro": ["macOS Sonoma", "macOS Monterey"],
    "Windows 11 laptop": ["Windows 11"], "Windows 10 PC": ["Windows 10"], "Chromebook": ["ChromeOS"],
    "Fire tablet": ["Fire OS 8"], "OnePlus 11": ["Android 14", "OxygenOS 14"], "Android tablet": ["Android 13"],
    "work laptop": ["Windows 11", "Windows 10", "Ubuntu 22.04"], "Surface Pro": ["Windows 11"],
    "Motorola phone": ["Android 13"], "Xiaomi phone": ["Android 14", "HyperOS"],
    "Linux desktop": ["Ubuntu 22.04", "Fedora 39"],
}
BROWSERS = ["Chrome", "Firefox", "Safari", "Edge", "Brave", "Opera"]
AREAS = ["the dashboard", "the reports page", "the settings page", "the calendar view", "the activity log",
         "the device list", "the billing page", "the file browser", "the search page", "the team page",
         "the automations tab", "the camera timeline", "the export screen", "the home screen"]
CARRIERS = ["UPS", "FedEx", "DHL", "USPS", "Royal Mail", "DPD", "Canada Post", "the courier", "Evri", "PostNL"]
COUNTRIES = ["Canada", "Ireland", "Germany", "Australia", "Norway", "Mexico", "Japan", "the Netherlands",
             "New Zealand", "Poland", "Portugal", "Brazil"]
CITIES = ["Leeds", "Austin", "Lyon", "Toronto", "Denver", "Glasgow", "Rotterdam", "Brisbane", "Porto",
          "Cork", "Phoenix", "Hamburg", "Nashville", "Calgary"]
IDPS = ["Okta", "Azure AD", "Google Workspace", "OneLogin", "JumpCloud"]
WHEN = ["yesterday", "last Tuesday", "Monday", "the 14th", "March 3", "last weekend", "the 2nd", "this morning",
        "Friday", "the last update", "June 28", "12/04", "last week", "the 21st", "Sept 9", "the weekend"]
DATES = ["yesterday", "last Tuesday", "on Monday", "two weeks ago", "on the 14th", "on March 3", "last weekend",
         "on the 2nd", "this morning", "on Friday", "at the start of the month", "on June 28", "ten days ago",
         "on 12/04", "last month", "on the 21st", "three days ago", "on Sept 9"]
DAYS = ["3 days", "5 days", "a week", "8 days", "10 days", "two weeks", "over two weeks", "nearly a month",
        "6 business days", "12 days"]
FEATURES = ["dark mode", "export to Excel", "a Linux desktop app", "keyboard shortcuts", "bulk editing",
            "custom fields", "scheduled reports", "an offline mode", "a public API", "Slack integration",
            "Microsoft Teams integration", "a Zapier integration", "recurring tasks", "an Apple Watch app",
            "home screen widgets", "multi-language support", "a Spanish translation", "SSO for small teams",
            "two-factor login with a hardware key", "Google Calendar sync", "a shared family calendar",
            "HomeKit support", "Matter support", "geofencing", "a vacation mode", "per-user permissions",
            "an audit log", "CSV import for contacts", "a night mode schedule", "tags and folders",
            "a larger font option", "a tablet layout", "sharing clips with a link", "custom alert sounds",
            "a do-not-disturb schedule", "webhooks for alerts", "PDF export", "a landscape mode on phones"]
CAPABILITIES = ["export all our data as CSV in one go", "pause a subscription instead of cancelling it",
                "rename devices in bulk", "schedule the vacuum by room", "set different alert sounds per camera",
                "see all invoices on one page", "share a single camera with a guest for a day",
                "turn off notifications at night automatically", "undo a deleted automation",
                "choose the start day of the week", "filter the activity log by device",
                "sort reports by date", "pin favourite devices to the top", "add notes to recordings",
                "download recordings in bulk", "set a different timezone per location",
                "archive old projects instead of deleting them", "copy an automation to another home",
                "get a weekly summary email", "invite users with read-only access", "search inside attachments",
                "group lights into zones", "set the thermostat from the lock screen",
                "use the app without creating an account", "merge duplicate contacts automatically",
                "edit the same document with two people at once", "track deliveries inside the app",
                "log in with a fingerprint"]
DEVICE_CAPABILITIES = ["turn off the status light at night", "show its energy use in the app",
                       "use a schedule for weekdays and weekends", "send an alert when it goes offline",
                       "update its firmware only at night", "work without the cloud",
                       "keep working on the local network when the internet is down",
                       "be shared with a guest without giving them my login"]
INTEGRATIONS = ["HomeKit", "Matter", "Alexa", "Google Home", "IFTTT", "SmartThings", "Home Assistant", "Siri shortcuts"]
PROMOS = ["SPRING20", "WELCOME10", "SAVE15", "BFRIDAY", "STUDENT25", "LOYAL5", "HOLIDAY30"]
LINE_ITEMS = ["platform fee", "service charge", "usage overage", "seat adjustment", "storage surcharge",
              "regulatory fee", "prorated credit"]
NAMES = ["Sam", "Priya", "Tom", "Ana", "Mike", "Lena", "Omar", "Chris", "Yuki", "Jo", "Dave", "Maria",
         "Ben", "Fatima", "Luis", "Kate", "Raj", "Nina", "Pete", "Aisha", "Greg", "Sofia", "Alex", "Mei",
         "Tariq", "Hannah", "Carlos", "Ivy", "Dan", "Elena", "Marcus", "Zoe", "J.", "K.", "R. M."]


def amount(rng: random.Random) -> str:
    cur = rng.choices(["$", "€", "£"], weights=[6, 2, 2])[0]
    if rng.random() < 0.25:
        return f"{cur}{rng.choice([9, 12, 15, 20, 29, 49, 60, 99, 120, 149, 240, 299])}"
    return f"{cur}{rng.randint(4, 349)}.{rng.choice(['99', '00', '49', '95', '50', '19', '89'])}"


def order(rng: random.Random) -> str:
    n = rng.randint(10000, 99999)
    return rng.choices([f"#{n}", f"#{n}{rng.randint(0, 9)}", f"ORD-{n}", f"no. {n}{rng.randint(10, 99)}"],
                       weights=[6, 2, 2, 1])[0]


def error(rng: random.Random) -> str:
    return rng.choice([
        f"error {rng.choice([500, 502, 503, 504, 403, 401, 429, 404])}", f"error code E{rng.randint(100, 999)}",
        f"0x{rng.randint(0x80000000, 0x8007FFFF):08X}", f"ERR-{rng.randint(1000, 9999)}",
        "ERR_CONNECTION_RESET", "SYNC_FAILED", "a timeout error", "\"Something went wrong\"",
        "\"unexpected token\"", "SSL_ERROR_HANDSHAKE", f"code {rng.randint(10, 99)}", "\"Network error\"",
        f"E{rng.randint(10, 99)}-{rng.randint(100, 999)}", "\"invalid session\"", "\"device not found\""])


SLOTS = {
    "product": lambda r: r.choice(PRODUCTS), "product2": lambda r: r.choice(PRODUCTS),
    "plan": lambda r: r.choice(PLANS), "addon": lambda r: r.choice(ADDONS),
    "device": lambda r: r.choice(list(DEVICES)),  # {os} is filled to match {device}: see fill()
    "browser": lambda r: r.choice(BROWSERS), "browser2": lambda r: r.choice(BROWSERS),
    "area": lambda r: r.choice(AREAS), "carrier": lambda r: r.choice(CARRIERS),
    "country": lambda r: r.choice(COUNTRIES), "city": lambda r: r.choice(CITIES), "idp": lambda r: r.choice(IDPS),
    "date": lambda r: r.choice(DATES), "when": lambda r: r.choice(WHEN), "days": lambda r: r.choice(DAYS), "feature": lambda r: r.choice(FEATURES),
    "feature2": lambda r: r.choice(FEATURES), "capability": lambda r: r.choice(CAPABILITIES),
    "devcap": lambda r: r.choice(DEVICE_CAPABILITIES), "integration": lambda r: r.choice(INTEGRATIONS),
    "promo": lambda r: r.choice(PROMOS), "lineitem": lambda r: r.choice(LINE_ITEMS),
    "amount": amount, "amount2": amount, "order": order, "order2": order, "error": error,
    "invoice": lambda r: f"INV-{r.randint(2021, 2024)}-{r.randint(1000, 9999)}",
    "tracking": lambda r: f"1Z{r.randint(100000, 999999)}{r.choice('ABCDEFXY')}{r.randint(1000, 9999)}",
    "last4": lambda r: f"{r.randint(0, 9999):04d}", "ref": lambda r: f"TX{r.randint(10 ** 7, 10 ** 8 - 1)}",
    "version": lambda r: f"{r.randint(3, 6)}.{r.randint(0, 19)}.{r.randint(0, 9)}",
    "size": lambda r: str(r.choice([5, 10, 20, 25, 50, 100, 200])), "row": lambda r: str(r.randint(2, 4000)),
    "pct": lambda r: f"{r.choice([10, 15, 20, 25, 30, 40, 60, 80, 99])}%",
    "n": lambda r: str(r.randint(3, 40)), "m": lambda r: str(r.randint(1, 2)),
    "years": lambda r: r.choice(["two", "three", "5", "six", "almost 4", "over 2", "10"]),
    "year": lambda r: str(r.randint(2015, 2021)),
}
SLOT_RE = re.compile(r"\{(\w+)\}")


def fill(template: str, rng: random.Random, values: dict[str, str]) -> str:
    """Fill the slots of `template`; `values` (one dict per ticket) keeps a slot's value across sentences."""

    def one(match: re.Match) -> str:
        key = match.group(1)
        if key == "os" and key not in values:
            values["os"] = rng.choice(DEVICES[values.setdefault("device", SLOTS["device"](rng))])
        if key not in values:
            values[key] = SLOTS[key](rng)
            while key.endswith("2") and values[key] == values.get(key[:-1]):  # {product2} != {product}
                values[key] = SLOTS[key](rng)
        return values[key]

    return re.sub(r"\b([Aa]) (?=[aeioAEIO])", r"\1n ", SLOT_RE.sub(one, template))


# ---------------------------------------------------------------------------------- per-team parts

CORE = {
    "billing": [
        "I was charged twice for my {plan} this month.",
        "There's a charge of {amount} on my card from you that I don't recognise.",
        "Please refund the {amount} you took {date}, I didn't authorise it.",
        "My invoice {invoice} says {amount} but my plan is supposed to be cheaper than that.",
        "I cancelled my {plan} {date} but you still billed me {amount}.",
        "How do I download the invoice for the payment I made {date}?",
        "My payment for the {plan} keeps getting declined even though the card works everywhere else.",
        "Can I switch from monthly to annual billing and get the yearly discount?",
        "The promo code {promo} wasn't applied at checkout and I paid full price.",
        "Why did my subscription go up to {amount} a month without any notice?",
        "I need a VAT invoice with our company name and tax ID on it.",
        "My free trial ended and you charged me {amount} even though I cancelled before it was over.",
        "How do I update the credit card on file? The old one expired.",
        "We're being billed for {n} seats but we only have {m} users.",
        "The refund you promised {date} still hasn't shown up on my statement.",
        "I downgraded to the free tier but I was still charged {amount} for the {plan}.",
        "Your pricing page says {amount} but my bank statement shows a higher amount.",
        "Can I pay by bank transfer or PayPal instead of a credit card?",
        "I was charged in euros instead of dollars and my bank added a conversion fee.",
        "There's a pending authorisation of {amount} from you that never went away.",
        "You charged us sales tax even though our organisation is tax exempt.",
        "The auto-renewal charged me {amount} and I never agreed to renew.",
        "Please cancel my {plan} and make sure there are no more charges.",
        "The receipt for order {order} shows a different amount than what I paid at checkout.",
        "The student discount stopped applying to my {plan} this billing cycle.",
        "I was charged a late fee of {amount} but my payment went through on time.",
        "Is it possible to split our bill between two cards?",
        "I upgraded to the {plan} and was charged the full price instead of a prorated amount.",
        "I see three charges of {amount} from you {date}, there should only be one.",
        "Our invoices need to go to our accounts payable address instead of to me.",
        "Where can I see my billing history for the last 12 months?",
        "You charged me {amount} for shipping on order {order} even though it was over the free shipping minimum.",
        "My gift card balance wasn't used, you charged the full {amount} to my card instead.",
        "Do you offer a nonprofit discount on the {plan}?",
        "My bank flagged a charge of {amount} as suspicious, can you confirm it came from you?",
        "I was billed for the {addon} add-on which I never added.",
        "The invoice doesn't include the {pct} discount we agreed with your sales team.",
        "Please change the billing address on our invoices to our new office.",
        "Can you explain the \"{lineitem}\" line on my last invoice? It's {amount}.",
        "My card was charged {amount} but order {order} still shows as unpaid.",
        "I'd like a prorated refund for the months I won't use on my annual {plan}.",
        "I'm paying twice, once through the App Store and once directly to you for the same {plan}.",
        "Do you offer monthly instalments for the {product}?",
        "Our finance team won't pay invoice {invoice} unless it has our purchase order number on it.",
        "The payment link for invoice {invoice} says it has expired, how do I pay it?",
        "I was charged {amount} {date} for a renewal I cancelled weeks ago.",
        "Why was I charged {amount} and then {amount2} a few minutes later?",
        "My credit from the last outage was never applied to my bill.",
    ],
    "technical": [
        "The app crashes as soon as I open it on my {device}.",
        "I get {error} every time I try to open {area}.",
        "{area} has been extremely slow since the last update, it takes ages to load.",
        "My {product} keeps dropping off the Wi-Fi every few hours.",
        "Sync between my phone and my laptop stopped working, changes don't show up on the other device.",
        "File upload fails with {error} for anything over {size} MB.",
        "The web app just shows a blank white page in {browser}.",
        "Notifications stopped arriving on my {device} after updating to {os}.",
        "The {product} won't pair with the app, it's stuck on \"searching for devices\".",
        "Search returns no results even for things I know are there.",
        "The CSV export produces a file full of garbled characters.",
        "The live video from my {product} freezes after a few seconds.",
        "The desktop app won't install on {os}, the installer quits with {error}.",
        "The firmware update on my {product} got stuck at {pct} and now the light is blinking red.",
        "The calendar view shows events on the wrong day, it looks like a timezone bug.",
        "Our API integration has been returning {error} on every request since {when}.",
        "Webhooks stopped firing for new records {date}.",
        "The charts on {area} never load, it's just a spinning wheel.",
        "The {product} shows as offline in the app even though it's clearly working.",
        "Every time I click save I get {error} and my changes are lost.",
        "The app is draining the battery on my {device}, it uses {pct} in the background.",
        "Images in the gallery don't load, I just see grey boxes.",
        "Motion alerts from my {product} arrive five minutes late, which makes them useless.",
        "Printing a report cuts off the last two columns.",
        "The Android widget stopped updating after the latest version.",
        "I can't get the {product} to connect to my 5 GHz network.",
        "The audio on my {product} has been crackling since the update.",
        "The app says \"no internet connection\" but every other app on my {device} works fine.",
        "None of my scheduled automations ran last night.",
        "The mobile app freezes when I rotate the screen on my {device}.",
        "The numbers on the reports page are off by one day.",
        "Copy and paste doesn't work in the editor in {browser}.",
        "I did a factory reset on the {product} but it still has the old settings.",
        "The CSV import fails at row {row} with {error}.",
        "The Google Calendar integration duplicates every event.",
        "Since {when} the app takes over a minute to start on my {device}.",
        "The voice assistant keeps saying my {product} is not responding.",
        "Uploading attachments bigger than {size} MB times out.",
        "The screen flickers whenever I open {area} on my {device}.",
        "Every push notification shows up twice on my {device}.",
        "My {product} gets really hot and restarts by itself.",
        "The links in your emails all go to a 404 page.",
        "All the timestamps in the activity log are an hour off since the clocks changed.",
        "Your status page says everything is operational but {area} is down for our whole team.",
        "After upgrading the SDK to {version} every call throws {error}.",
        "Offline mode loses my edits when the app reconnects.",
        "The camera live view only says \"stream unavailable\" on my {device}.",
        "The app version {version} won't open at all on {os}, it closes right after the splash screen.",
        "The {product} keeps turning itself back on at 3 am even though no automation is set.",
    ],
    "account": [
        "I can't log in to my account, it says my password is wrong even right after resetting it.",
        "The password reset email never arrives, I've requested it five times.",
        "My account got locked after too many login attempts.",
        "I lost my phone and can't get the two-factor codes anymore.",
        "Please delete my account and all the data you have on me.",
        "How do I change the username on my profile?",
        "I ended up with two accounts by mistake, can you merge them?",
        "Someone logged into my account from {city} and it wasn't me.",
        "I'm not receiving the verification code by SMS.",
        "How do I add a new team member to our workspace?",
        "I need to transfer ownership of our account to a colleague before I leave the company.",
        "My account shows as deactivated but I never closed it.",
        "\"Sign in with Google\" creates a new empty account instead of opening my existing one.",
        "How do I turn on two-factor authentication?",
        "I'd like a copy of all the personal data you hold about me.",
        "A colleague has left and we need to remove her access to our workspace.",
        "The email verification link says it has expired.",
        "I can't remember which email address I used to sign up.",
        "My name is misspelled on my profile and I can't edit it.",
        "I changed my phone number and now I can't receive login codes.",
        "Where do I change my password? I can't find the option in settings.",
        "My account was suspended and nobody told me why.",
        "I need admin rights on our workspace but the owner no longer works here.",
        "I deleted my account by accident, can it be restored?",
        "I got an email saying my password was changed but I didn't change it.",
        "How do I log out of all devices at once?",
        "The security questions I set up are no longer accepted.",
        "I'd like to stop the marketing emails but keep my account.",
        "Single sign-on with {idp} says my user isn't assigned to the app.",
        "I need to change the name on the account after getting married.",
        "None of my recovery codes work.",
        "My kid made an account with my email address, please remove it.",
        "I want to change the primary email on my account but the confirmation email never comes.",
        "The login page says \"account does not exist\" but I've used it for years.",
        "Please reactivate my old account, I haven't used it since {year}.",
        "How do I change a user's role from admin to viewer?",
        "I'm stuck in a loop between the login page and the two-factor page.",
        "The invite link to join our workspace says it's invalid.",
        "Can I change the country on my account? I moved to {country}.",
        "The codes from my authenticator app are always rejected.",
        "I want to close my account but there's no button for it anywhere.",
        "After changing my email I'm locked out and neither the old nor the new address works.",
        "I think an old tablet is still logged in to my account, how can I see which devices are?",
        "Please remove the old phone number from my profile.",
        "My account says \"pending approval\" since {when}.",
        "I shared my login with my ex and want to make sure they can't get in anymore.",
        "How can I give my partner access to the home without sharing my password?",
        "The magic login link opens the app but then says the session is invalid.",
    ],
    "shipping": [
        "My order {order} still hasn't arrived and it's been {days}.",
        "The tracking for order {order} hasn't updated since {when}.",
        "The package says delivered but there's nothing here.",
        "I ordered the {product} but got a {product2} in the box.",
        "The box arrived crushed and the {product} inside is cracked.",
        "Can I change the delivery address for order {order}? I'm moving next week.",
        "How long does shipping to {country} usually take?",
        "Order {order} was only partly delivered, the {product} is missing.",
        "{carrier} says my address is incomplete and they're sending the parcel back.",
        "I need to return the {product}, how do I get a return label?",
        "Do you ship to PO boxes?",
        "I paid for express shipping but order {order} is still \"processing\" after {days}.",
        "The tracking number you sent doesn't work on the {carrier} website.",
        "My parcel is stuck in customs, what do I need to do?",
        "Can I pick up my order at a store instead of having it delivered?",
        "The courier left my package with a neighbour I've never met.",
        "I ordered two {product}s but only one was in the box.",
        "When will the {product} be back in stock so my order can ship?",
        "Order {order} says shipped but {carrier} has no record of it.",
        "Can you hold my shipment until I'm back from holiday?",
        "The return I sent {date} still hasn't been received at your warehouse.",
        "I'd like to exchange the {product} for a different colour.",
        "The delivery driver never showed up in the time slot I booked.",
        "Can you combine orders {order} and {order2} into one shipment?",
        "My package was delivered to the wrong address.",
        "I need to cancel order {order} before it ships.",
        "My parcel has been going back and forth between two {carrier} depots for a week.",
        "The {product} arrived without the power adapter.",
        "Do you ship internationally? I'm in {country}.",
        "The delivery needed a signature and I was at work, how do I reschedule it?",
        "The estimated delivery date for order {order} keeps getting pushed back.",
        "My order came in two packages and the second one never showed up.",
        "I was told it ships within 2 days but it's been {days} and it hasn't left the warehouse.",
        "The package arrived open and some of the items are missing.",
        "How do I send back a faulty {product} under warranty?",
        "Can the replacement {product} be sent by express?",
        "Can I upgrade order {order} from standard to next-day delivery?",
        "The tracking number in my confirmation belongs to someone else's parcel.",
        "My order confirmation didn't include a tracking number.",
        "The pickup code for the parcel locker doesn't work.",
        "I put the wrong apartment number on order {order}, can you fix it before it ships?",
        "The {carrier} driver said the parcel was too big and took it back to the depot.",
        "Can I ship to a different address than my billing address?",
        "My pre-order of the {product} was supposed to ship {date}.",
        "The return label you emailed me has already expired.",
        "What's the delivery estimate to {city} if I order today?",
        "{carrier} lost my package and says I have to contact the sender.",
        "The delivery was attempted while I was home and nobody rang the bell.",
    ],
    "feature_request": [
        "It would be great if you added {feature}.",
        "Please add {feature}, we'd use it every day.",
        "Are there any plans to support {feature}?",
        "Could you make it possible to {capability}?",
        "Feature request: {feature}.",
        "I'd love to be able to {capability}.",
        "Any chance of {feature} in a future release?",
        "We'd happily pay extra for {feature}.",
        "It would save us hours every week if we could {capability}.",
        "Have you thought about adding {feature}?",
        "Suggestion: let us {capability}.",
        "Please consider {feature} for the mobile app.",
        "It would be nice to {capability} instead of doing it by hand.",
        "Is {feature} on your roadmap?",
        "I'd like to suggest {feature}.",
        "Our team keeps asking for {feature}.",
        "Can you add an option to {capability}?",
        "+1 for {feature}, please.",
        "The {product} would be perfect if it worked with {integration}.",
        "Wish list: {feature} and {feature2}.",
        "Are you planning an app for smart TVs?",
        "Please bring back the compact list view from the old version.",
        "Could admins get a way to {capability}?",
        "An API endpoint for device history would make our integration much easier.",
        "Would love a way to {capability} from the web app too.",
        "Idea: let the {product} {devcap}.",
        "It's a small thing but please let us {capability}.",
        "Why isn't there {feature} yet? It's the one thing I'm missing.",
        "If you ever add {feature}, count me in as a beta tester.",
        "Could the {product} get a setting to {devcap}?",
        "Please make it possible to {capability} on {os}.",
        "I'd really like {feature} on the {device} app.",
        "Our company would roll this out to all {n} offices if it had {feature}.",
        "Can you add {feature}? I asked on the forum and lots of people want it too.",
        "My one request: {feature}.",
        "Would you consider adding {feature} to the {plan}?",
        "Is there any way you could add a setting to {capability}?",
        "Please add more colours for the {product}.",
        "Could the reports page get a date range picker?",
        "It'd be handy to have a tablet layout that uses the whole screen.",
        "Could you add a second admin role with fewer permissions?",
        "A way to {capability} would be a game changer for us.",
        "Please let us choose which events trigger an alert on the {product}.",
        "The app really needs {feature}.",
    ],
}

DETAIL = {
    "billing": [
        "The transaction reference on my statement is {ref}.", "It's the card ending in {last4}.",
        "The invoice number is {invoice}.", "The same thing happened last month.",
        "I only have one account with you so it can't be a second subscription.",
        "My bank says the charge has already gone through, it's not pending.", "I'm on the {plan}.",
        "I've attached a screenshot of my bank statement.", "The charge was {amount}.",
        "I checked my account and there's only one active subscription.",
        "I cancelled through the app and got a confirmation email.", "This is a company card so I need it fixed for our books.",
        "The charge shows up as a payment to you {date}.", "Our accountant noticed it during month end.",
        "That's {amount} I really can't afford right now.", "The price on your website hasn't changed.",
    ],
    "technical": [
        "I'm on {os} with the latest version of the app ({version}).",
        "I already tried reinstalling the app and restarting the {device}.", "Clearing the cache didn't help.",
        "It happens in {browser} and {browser2}.", "It worked fine until {when}.", "Screenshot attached.",
        "My internet is fine, other devices on the same network work.",
        "It happens every time, I can reproduce it in a few seconds.",
        "Two other people on my team see the exact same thing.", "The exact error is {error}.",
        "I've already power cycled the {product} and the router.", "It also happens in incognito mode.",
        "I'm using version {version}.", "Logging out and back in doesn't change anything.",
        "It started right after the update.", "Happy to send logs if you tell me where to find them.",
    ],
    "account": [
        "I'm using the same email I signed up with.", "I've tried resetting my password three times now.",
        "I've checked my spam folder too.", "I no longer have the old phone number.",
        "I can confirm my identity with the last four digits of the card on file ({last4}).",
        "It's a work account for our team of {n}.", "I signed up back in {year}.",
        "I still get your newsletters at the same address, so the email is right.",
        "I don't have the recovery codes, I never saved them.", "The account has years of data I can't lose.",
        "I'm the only admin on the account.", "I'm writing from a different address because I can't get in.",
        "The last time I logged in successfully was {date}.",
    ],
    "shipping": [
        "The order number is {order}.", "The tracking number is {tracking}.",
        "I was home all day and nobody came to the door.", "I've checked with my neighbours and the building reception.",
        "It was meant to be a birthday present.", "I paid extra for express shipping.",
        "The tracking page just says \"in transit\".", "I live in {city} if that helps.",
        "{carrier} told me to contact you.", "It was ordered {date}.", "Photos of the box are attached.",
        "The label on the box had my name but the wrong street number.",
        "Your site said delivery in 3 to 5 business days.", "The original packaging is unopened.",
    ],
    "feature_request": [
        "Right now we do it by hand in a spreadsheet.", "We're a team of {n} and this is our most requested thing.",
        "Other apps we use already have this.", "Even a basic version would help.", "Happy to beta test it.",
        "I know you're busy, just thought I'd suggest it.", "This would make the app perfect for us.",
        "It's the only thing missing for me.", "I've been using the app for {years} years and love it otherwise.",
        "My whole family would use this.", "Not urgent, just an idea.", "It would really help with accessibility.",
        "I'd switch to the {plan} for this.",
    ],
}

ASK = {
    "billing": [
        "Please fix this before my next billing date.", "Please look into it and let me know.",
        "Can you sort out my billing?", "Please check my account and get back to me.",
        "I just want my bill to be right.", "Please reply before I get charged again.",
        "Can someone from billing get back to me?", "I'd rather not have to call my bank about this.",
        "Can you check what happened with my payments?",
    ],
    "technical": [
        "Is this a known bug?", "Is there a workaround?", "When will this be fixed?",
        "Can someone from your tech team look at it?", "Let me know if you need logs.",
        "Please help, we rely on this for work.", "Any idea what's going on?", "Is there a fix coming?",
        "What should I try next?", "Can you check if it's on your side?",
    ],
    "account": [
        "Can you help me with my account?", "Can you confirm when it's done?",
        "What do you need from me to prove it's my account?", "Please sort this out.",
        "How do I fix this myself?", "Can you do it on your end?", "I need this sorted today.",
        "Is there a way to do this without contacting you every time?", "Can you check my account settings?",
    ],
    "shipping": [
        "Can you check what's going on with my order?", "Can you contact the courier?",
        "When can I expect to hear back?", "Can you check with the warehouse?", "What are my options?",
        "Please let me know what happens next with the delivery.", "Can you look into the shipment?",
        "Please update me on the order.",
    ],
    "feature_request": [
        "Is this something you'd consider?", "Let me know if it makes it onto the roadmap.",
        "Thanks for considering it.", "Would love to hear if this is planned.", "Please pass it on to the product team.",
        "Any timeline?", "Keep up the good work.", "Hope you can add it.",
    ],
}

TERSE = {
    "billing": [
        "refund please", "why was i charged twice??", "charged {amount} for nothing", "need invoice for {when}",
        "stop charging me", "double charge again", "wheres my refund", "card declined but it works everywhere else",
        "overcharged on my last bill", "pls send receipt for order {order}", "what is this {amount} charge?",
        "need a VAT invoice asap", "how do i update my card", "charged after cancelling!!", "wrong amount on invoice",
        "Billing question about {invoice}", "refund {amount}", "I want my money back", "promo code not applied",
        "how do I get a refund", "you billed me twice this month",
    ],
    "technical": [
        "app keeps crashing", "{error} again", "{area} is broken", "site down?", "sync not working",
        "cant upload files", "{product} offline again", "blank screen in {browser}", "the update broke everything",
        "app wont open on my {device}", "notifications not coming through", "camera not connecting",
        "getting {error} on save", "export broken", "everything is so slow today", "{product} wont pair",
        "bug in {area}", "nothing loads", "crash on startup since {version}",
    ],
    "account": [
        "cant login again!!", "locked out", "password reset not working", "not getting my 2fa code",
        "delete my account", "forgot my password", "account locked pls help", "how do i change my email",
        "i think my account was hacked", "verification email never came", "cant log in", "reset link expired",
        "need to change my username", "how to add a user", "remove my phone number", "2FA broken, cant get in",
        "close my account please", "account suspended??", "login not working",
    ],
    "shipping": [
        "where is my order", "where is order {order}??", "package never arrived", "tracking not updating",
        "wrong item received", "box arrived damaged", "need a return label", "still waiting on delivery",
        "when will {order} ship", "parcel lost", "order {order} missing", "not delivered yet",
        "delivery address change pls", "do you ship to {country}?", "my package is late", "return status?",
        "still no package", "item missing from box",
    ],
    "feature_request": [
        "please add dark mode", "dark mode when??", "need {feature}", "any plans for {feature}?",
        "add {feature} pls", "suggestion: {feature}", "+1 for {feature}", "would love {feature}",
        "pls add {feature}", "{feature} would be great", "feature idea: {feature}", "can you add {feature}?",
    ],
}

# Asides about another team's topic (for ambiguous tickets): a minor mention, the label stays primary.
SIDE = {
    "billing": ["Also, unrelated, I think I was charged twice last month.",
                "PS: can you also send me last month's invoice?",
                "Separately, the price went up and nobody told me.",
                "(also my card was charged {amount} {date}, not sure what for)"],
    "technical": ["Also the app has been really slow lately but that's not why I'm writing.",
                  "PS: the app crashed twice while I was writing this.",
                  "Side note, {area} gives me {error} sometimes.",
                  "(the {product} also keeps going offline but that's another story)"],
    "account": ["Also I can't log in on my phone anymore, not sure if related.",
                "PS: I still haven't got the password reset email from last week.",
                "Side note, my two-factor codes keep failing.",
                "(I'm writing from my partner's account because mine is locked)"],
    "shipping": ["Also my last order arrived late too.",
                 "PS: the replacement part still hasn't shipped.",
                 "Side note, tracking for order {order} hasn't moved in days.",
                 "(and the box it came in was damaged)"],
    "feature_request": ["PS: would be great if you had dark mode.",
                        "Also, any plans for {feature}?",
                        "Side note, please add a way to {capability}.",
                        "(and it would be nice to have {feature} one day)"],
}

# Hand-written two-topic tickets, labelled by their primary intent.
MIXED = [
    ("I was charged twice for the {plan} this month and now I can't even log in to check my invoices. "
     "Please refund the duplicate charge.", "billing"),
    ("My order {order} is {days} late and at this point I just want my money back. Please refund the {amount}.",
     "billing"),
    ("Order {order} is {days} late. Where is it? If it doesn't arrive this week I might ask for a refund.",
     "shipping"),
    ("I deleted my account {date} but you still charged me {amount}. I want that refunded.", "billing"),
    ("The parcel finally came but I paid for express and it took {days}. Can you refund the shipping fee?",
     "billing"),
    ("I can't log in to my account and I think I was billed again while I was locked out. "
     "Please help me get back in first so I can check.", "account"),
    ("Two-factor codes aren't arriving so I can't get in to download the invoice my accountant needs.", "account"),
    ("Please delete my account. And make sure I don't get billed again.", "account"),
    ("My colleague needs to see our invoices, how do I give her admin rights on the account?", "account"),
    ("I changed my email in my profile but now it won't let me sign in, and my order updates still go to the "
     "old address.", "account"),
    ("The app crashes every time I open the billing page so I can't update my card.", "technical"),
    ("Since the update I can't log in on my {device}, the app shows {error} right after I enter my password. "
     "It works fine on the website.", "technical"),
    ("Checkout fails with {error} every time I try to pay for the upgrade.", "technical"),
    ("The {product} arrived yesterday but it won't turn on, the light just blinks orange. "
     "Tried charging it overnight.", "technical"),
    ("I want to upgrade to the {plan} but the upgrade button doesn't do anything in {browser}.", "technical"),
    ("The tracking page in your app crashes when I tap it, so I have no idea where order {order} is.",
     "technical"),
    ("The sync bug from last week is back. Also, would be great to have {feature} one day.", "technical"),
    ("The {product} arrived damaged. Please send a replacement, I don't want a refund.", "shipping"),
    ("The {product} keeps disconnecting and honestly I just want to return it. How do I send it back?",
     "shipping"),
    ("I updated my address in my account settings but order {order} still went to the old one.", "shipping"),
    ("I was charged {amount} for order {order} but it never arrived.", "shipping"),
    ("It would be nice if you accepted PayPal, I don't have a credit card.", "feature_request"),
    ("Could you add a way to see all my invoices on one page? Right now I click through every month.",
     "feature_request"),
    ("Please add delivery notifications by SMS, I always miss the courier.", "feature_request"),
    ("Would be great to log in with a fingerprint instead of typing my password every time.", "feature_request"),
    ("Could you add a way to pause my subscription instead of cancelling? I'm travelling for 3 months.",
     "feature_request"),
    ("The export is slow but what I really need is export to Excel, CSV isn't enough for our finance team.",
     "feature_request"),
]

OPENERS = ["Hi,", "Hello,", "Hi there,", "Hey,", "Good morning,", "Dear support team,", "Hello support,",
           "Hi team,", "To whom it may concern,", "Hey guys,", "Hi support,", "Good afternoon,",
           "Hi, hope you're well.", "Hello again,", "Hi! Quick question.", "Hey there,", "Dear Sir or Madam,",
           "Hiya,", "Morning,", "Hi folks,", "Hello, I hope someone can help.", "Hi all,", "Greetings,"]
CONTEXT = ["I've been a customer for {years} years.", "This is my second time contacting you about this.",
           "I already tried the live chat but nobody answered.", "Sorry if this is the wrong place to ask.",
           "I'm writing on behalf of my dad.", "I checked the help center but couldn't find an answer.",
           "We're a small business so this matters a lot.", "Not sure who to ask about this.",
           "Writing from my phone, sorry for typos.", "I was on hold for 40 minutes earlier.",
           "Long time user, first time writing in.", "My previous ticket was closed without a reply.",
           "I'm travelling at the moment so email is best.", "A friend recommended your products.",
           "I'm not very technical so bear with me.", "I'm the office manager here."]
URGENT = ["This is urgent.", "Please reply asap.", "I need this sorted today.", "Really frustrated at this point.",
          "This is getting ridiculous.", "Please treat this as a priority.", "Third email about this now."]
CLOSERS = ["Thanks.", "Thanks in advance.", "Thank you!", "Appreciate the help.", "Cheers.",
           "Looking forward to your reply.", "Thanks for your help.", "Thanks a lot.", "ty", "thx",
           "Thank you for your time.", "Hope to hear back soon.", "Any help appreciated."]
SIGNOFFS = ["Regards,", "Best,", "Kind regards,", "Thanks,", "Cheers,", "Many thanks,", "Best regards,",
            "Thank you,", "-"]
PREFIXES = ["URGENT:", "Re:", "Question -", "Help:", "Fwd:", "[support]"]

INFORMAL = [("can't", "cant"), ("don't", "dont"), ("doesn't", "doesnt"), ("won't", "wont"), ("I'm", "im"),
            ("please", "pls"), ("Please", "Pls"), ("you", "u"), ("Thanks", "thx"), ("because", "cuz"),
            ("isn't", "isnt"), ("I've", "ive"), ("it's", "its"), ("your", "ur"), ("though", "tho"),
            ("going to", "gonna"), ("want to", "wanna"), ("thanks", "thx"), ("are", "r")]
KEYS = "qwertyuiop asdfghjkl zxcvbnm"
NEIGHBOURS = {c: "".join(row[j] for j in (i - 1, i + 1) if 0 <= j < len(row))
              for row in KEYS.split() for i, c in enumerate(row)}


# -------------------------------------------------------------------------------------------- noise

def typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 1)
    kind = rng.choice(["swap", "drop", "double", "key"])
    if kind == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == "drop":
        return word[:i] + word[i + 1:]
    if kind == "double":
        return word[:i] + word[i] + word[i:]
    near = NEIGHBOURS.get(word[i].lower())
    return word[:i] + rng.choice(near) + word[i + 1:] if near else word[:i] + word[i + 1:]


def add_typos(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not candidates:
        return text
    n = rng.choices([1, 2, 3], weights=[6, 3, 1])[0] if len(words) >= 12 else 1
    for i in rng.sample(candidates, min(len(candidates), n)):
        words[i] = typo(words[i], rng)
    return " ".join(words)


def informal(text: str, rng: random.Random) -> str:
    for formal, casual in INFORMAL:
        if rng.random() < 0.6:
            text = re.sub(rf"(?<![\w']){re.escape(formal)}(?![\w'])", casual, text)
    return text


def noisy(sentences: list[str], rng: random.Random) -> str:
    if rng.random() < P_CAPS_SENTENCE and len(sentences) > 1:
        i = rng.randrange(len(sentences))
        sentences[i] = sentences[i].upper()
    text = " ".join(sentences)
    if rng.random() < P_INFORMAL:
        text = informal(text, rng)
    if rng.random() < P_NO_PUNCT:
        text = re.sub(r"(?<=\w)[.,](?=\s|$)", "", text)
        text = text.replace("'", "") if rng.random() < 0.5 else text
    if rng.random() < P_EXCLAIM:
        text = re.sub(r"[.!?]?$", rng.choice(["!!", "!!!", "??", "?!"]), text, count=1)
    if rng.random() < P_TYPO:
        text = add_typos(text, rng)
    r = rng.random()
    if r < P_LOWER:
        text = text.lower()
    elif r < P_LOWER + P_ALL_CAPS and len(text.split()) < 20:
        text = text.upper()
    return text


# ---------------------------------------------------------------------------------------- composing

def lower_first(sentence: str) -> str:
    first = sentence.split(" ", 1)[0]
    if first in ("I", "I'm", "I've", "I'd", "I'll") or first[:1] in "{\"+" or first[1:2].isupper():
        return sentence
    return sentence[:1].lower() + sentence[1:]


def compose(label: str, rng: random.Random) -> str:
    if rng.random() < P_TERSE:
        return noisy([fill(rng.choice(TERSE[label]), rng, {})], rng)
    values: dict[str, str] = {}
    mixed = rng.random() < P_MIXED
    if mixed:
        core = [fill(rng.choice([t for t, lab in MIXED if lab == label]), rng, values)]
    else:
        core = [fill(rng.choice(CORE[label]), rng, values)]

    r = rng.random()
    mode = "short" if r < P_SHORT else "long" if r < P_SHORT + P_LONG else "medium"
    opener, context, after = None, [], []
    if mode == "short":
        if rng.random() < 0.3:
            opener = rng.choice(OPENERS)
        if rng.random() < 0.3:
            after.append(fill(rng.choice(ASK[label]), rng, values))
    else:
        long = mode == "long"
        if rng.random() < (0.85 if long else 0.6):
            opener = rng.choice(OPENERS)
        if rng.random() < (0.6 if long else 0.25):
            context.append(fill(rng.choice(CONTEXT), rng, values))
        details = rng.sample(DETAIL[label], rng.choice([2, 3, 3, 4]) if long else rng.choice([0, 1, 1]))
        after += [fill(d, rng, values) for d in details]
        if not mixed and rng.random() < (0.3 if long else 0.07):
            second = fill(rng.choice(CORE[label]), rng, values)
            if second.split()[:3] != core[0].split()[:3]:
                after.insert(rng.randint(0, len(after)), "Also, " + lower_first(second))
        if rng.random() < (0.8 if long else 0.5):
            after.append(fill(rng.choice(ASK[label]), rng, values))
        if long and rng.random() < 0.5:
            after.append(fill(rng.choice(CONTEXT), rng, values))
        if rng.random() < (0.25 if long else 0.1):
            after.append(rng.choice(URGENT))
    if not mixed and rng.random() < P_SIDE / (1 - P_TERSE):
        other = rng.choice([lab for lab in SIDE if lab != label])
        after.insert(rng.randint(0, len(after)), fill(rng.choice(SIDE[other]), rng, values))

    sentences = context + core + after
    if opener:
        if opener.endswith(",") and rng.random() < 0.5:
            sentences[0] = lower_first(sentences[0])
        sentences.insert(0, opener)
    if rng.random() < P_PREFIX:
        sentences.insert(0, rng.choice(PREFIXES))
    if mode != "short" and rng.random() < 0.65 or mode == "short" and rng.random() < 0.25:
        if rng.random() < 0.45:
            sentences.append(rng.choice(SIGNOFFS) + " " + rng.choice(NAMES))
        else:
            sentences.append(rng.choice(CLOSERS))
            if rng.random() < 0.3:
                sentences.append(rng.choice(NAMES))
    text = noisy(sentences, rng)
    if mode == "long" and not 60 <= len(text.split()) <= 120:
        return compose(label, rng)  # keep long tickets within 60-120 words
    return text


def key(text: str) -> str:
    """Near-duplicate key: the words, ignoring case and punctuation."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def main() -> None:
    rng = random.Random(SEED)
    rows: list[tuple[str, str]] = []
    seen: set[str] = set()
    counts = dict.fromkeys(TARGETS, 0)
    while any(counts[lab] < TARGETS[lab] for lab in TARGETS):
        for label in TARGETS:  # round-robin: a fixed order of draws from one seeded generator
            if counts[label] >= TARGETS[label]:
                continue
            text = " ".join(compose(label, rng).split())
            if not text or key(text) in seen:
                continue
            seen.add(key(text))
            rows.append((text, label))
            counts[label] += 1
    rng.shuffle(rows)
    with OUT.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    print(f"wrote {len(rows)} tickets to {OUT}: " + ", ".join(f"{lab} {n}" for lab, n in counts.items()))


if __name__ == "__main__":
    main()

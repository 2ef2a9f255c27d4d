from django.core.management.base import BaseCommand

from apps.accounts.demo import DEMO_PASSWORD, DEMO_USERS, seed_accounts


class Command(BaseCommand):
    help = "Create (or complete) the demo organisations, projects and one user per persona. Safe to run twice."

    def handle(self, *args, **options):
        seed_accounts()
        from apps.clouds.demo import seed_clouds

        clouds = seed_clouds()
        from apps.catalog.demo import seed_catalog

        catalog = seed_catalog()
        from apps.deployments.demo import seed_deployments

        deployments = seed_deployments()
        ready = f"Demo data ready. Sign in with any of these (password: {DEMO_PASSWORD}):"
        self.stdout.write(self.style.SUCCESS(ready))
        for username, (full_name, grants) in DEMO_USERS.items():
            roles = ", ".join(f"{r} in {o}{'/' + p if p else ''}" for o, p, r in grants)
            self.stdout.write(f"  {username:<8} {full_name:<18} {roles}")
        self.stdout.write(f"Demo clouds: {', '.join(sorted(clouds))}")
        self.stdout.write(
            f"Demo catalog: {catalog['images']} images, {catalog['profiles']} hardware profiles, "
            f"{catalog['items']} catalog items"
        )
        self.stdout.write(
            f"Demo deployments: {deployments['deployments']} ({deployments['active']} active, "
            f"{deployments['waiting']} waiting for approval)"
        )
